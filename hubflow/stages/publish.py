"""Publish a run to the Hub: the model with its card, the predictions as a dataset (after gate.py promoted it).

PipelineResult + PublishConfig -> (GateDecision, gate.py) -> PublishedRepo (model) -> PublishedRepo (predictions).
Each publish is ONE `create_commit` whose LFS objects are uploaded before it, so a publish cut short leaves the repo at
its previous commit, never a partial one. Each is idempotent: when the head already holds this content (weights sha256
and the card's `hubflow:` lineage), no commit is made and the head's sha comes back with `created=False`.
The token comes from the hub door at call time; it is never a parameter, and a card that contains it is refused.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, ModelCard

from ..config import PublishConfig, ReviewMode, SpaceConfig, check_repo_id, for_kind
from ..doors import hub, store
from ..errors import PreflightError
from ..kinds import kind_for
from ..refs import GateDecision, PinnedRepo, PipelineResult, PublishedRepo
from .card import MODEL_LINEAGE, PREDICTIONS_LINEAGE, model_card, model_lineage, predictions_card, predictions_lineage
from .facts import read_facts

ROWS_PER_FILE = 100_000
_DEFAULT_NAME_MAX = 96 - len("-predictions")  # the Hub's name limit, less the suffix of the predictions repo


def load_result(summary_uri: str) -> PipelineResult:
    """The `PipelineResult` a pipeline run stored at `summary_uri`."""
    return PipelineResult.model_validate(store.read_json(summary_uri))


def target_repos(result: PipelineResult, cfg: PublishConfig) -> tuple[str, str]:
    """(model repo, predictions repo): the configured ids, else `<token user>/<base model>-<dataset>[-predictions]`."""
    data = result.dataset.repo_id if result.dataset else result.raw.source
    return target_repos_for(result.base_model.repo_id, data, cfg)


def target_repos_for(base_model: str, data_source: str, cfg: PublishConfig) -> tuple[str, str]:
    """`target_repos` from the run's inputs, before anything ran (the release preflight)."""
    user = hub.check_token()
    if user is None:
        raise PreflightError("publish.enabled: publishing needs a Hub token; set HF_TOKEN or $HUBFLOW_HF_TOKEN_BLOCK")
    model = _qualified(cfg.repo_id or _default_name(base_model, data_source), user)
    return model, _qualified(cfg.predictions_repo_id or f"{model}-predictions", user)


def release_targets(base_model: str, data_source: str, cfg: PublishConfig, space: SpaceConfig) -> dict[str, str]:
    """{setting: repo id} of every repo the release will write (model, predictions, and the Space when enabled),
    each checked against the Hub client's own rule: a derived id the client would refuse (a configured model repo
    whose `-predictions` or `-demo` name passes 96 characters) stops the run here, before anything trains."""
    from .space import default_space_id

    model, predictions = target_repos_for(base_model, data_source, cfg)
    targets = {"publish.repo_id": model, "publish.predictions_repo_id": predictions}
    if space.enabled:
        targets["space.space_id"] = default_space_id(model, space)
    for setting, repo_id in targets.items():
        try:
            check_repo_id(repo_id, setting)
        except ValueError as e:
            raise PreflightError(str(e)) from None
    return targets


def run_tag(result: PipelineResult) -> str:
    """The tag a publish puts on its commit: the training run's id, else the weights' fingerprint."""
    return _tag(result.flow_run_id, result.checkpoint.fingerprint)


def _tag(flow_run_id: str | None, fingerprint: str) -> str:
    return f"run-{flow_run_id[:8]}" if flow_run_id else f"model-{fingerprint[:12]}"


# ---- the model --------------------------------------------------------------------------------------------------
def push_model(result: PipelineResult, cfg: PublishConfig, repo_id: str | None = None,
               decision: GateDecision | None = None) -> PublishedRepo:
    """Checkpoint folder + model card -> one commit on the model repo (created private per `cfg.private`), tagged."""
    uri, fingerprint, weights_file = published_folder(result, cfg)
    repo_id = repo_id or target_repos(result, cfg)[0]
    url = hub.ensure_repo(repo_id, "model", cfg.private)
    head = hub.head(repo_id, "model")
    single = store.exists(store.join(uri, weights_file))
    weights = {weights_file: fingerprint} if single else {}  # sharded: the card's fingerprint vouches
    lineage = model_lineage(result, fingerprint)
    held = _head_holds(repo_id, "model", head, weights, ModelCard, lineage, MODEL_LINEAGE)
    if held is not None:
        # The head is this model, committed by an earlier flow run (a release cut short after the model commit, or
        # a cached rerun): its card names that run, so the tag and this run's record name it too, not this rerun.
        # Tagging only fills in a tag an interrupted publish missed; an existing tag is left as is.
        tag = _tag(held.get("flow_run_id"), result.checkpoint.fingerprint)
        hub.tag(repo_id, "model", tag, head)
        return PublishedRepo(repo_id=repo_id, repo_type="model", sha=head, url=url, created=False, tag=tag)

    tag = run_tag(result)  # this run makes the commit: its card, tag and record name it
    with tempfile.TemporaryDirectory() as tmp:
        folder = store.get_dir(uri, tmp)
        _check_weights(folder, fingerprint)
        facts = read_facts(folder)
        card = str(model_card(result, repo_id, tag, facts, fingerprint, license=_license(result.base_model),
                              decision=decision))
        _refuse_secrets(card, "the model card")
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        files.update(_licence_files(result.base_model))
        files["README.md"] = card.encode()
        title = f"hubflow: model {fingerprint[:12]} ({tag})"
        description = f"Fine-tuned from {result.base_model.repo_id}@{result.base_model.sha}."
        if cfg.review is ReviewMode.pr:  # a person merges it; no tag until then (a tag names a commit on main)
            num, pr_url, sha = hub.open_pull_request(repo_id, "model", files, title, description)
            return PublishedRepo(repo_id=repo_id, repo_type="model", sha=sha, url=url, created=True, pr_num=num,
                                 pr_url=pr_url)
        commit = hub.commit_exactly(repo_id, "model", files, title, description, parent=head)
    created = commit != head  # the client skips a commit whose files are all unchanged and returns the head
    if created:
        hub.tag(repo_id, "model", tag, commit)
    return PublishedRepo(repo_id=repo_id, repo_type="model", sha=commit, url=url, created=created, tag=tag)


def published_folder(result: PipelineResult, cfg: PublishConfig) -> tuple[str, str, str]:
    """(store URI, weights fingerprint, weights file) of what the kind publishes (a causal LM: the model, or with
    publish.format=adapter the adapter alone)."""
    task = result.checkpoint.facts.task
    return kind_for(task).published_folder(result.checkpoint, for_kind(cfg, task))


# ---- the predictions --------------------------------------------------------------------------------------------
def push_predictions(result: PipelineResult, model: PublishedRepo, cfg: PublishConfig,
                     repo_id: str | None = None) -> PublishedRepo:
    """Test-split predictions -> `data/test-0000i-of-0000N.parquet` + dataset card, one commit on a dataset repo."""
    repo_id = repo_id or target_repos(result, cfg)[1]
    with tempfile.TemporaryDirectory() as tmp:
        files = write_prediction_files(result, Path(tmp))
        card = str(predictions_card(result, model, sorted(files)))
        _refuse_secrets(card, "the dataset card")
        url = hub.ensure_repo(repo_id, "dataset", cfg.private)
        head = hub.head(repo_id, "dataset")
        digests = {path: store.sha256_file(p) for path, p in files.items()}
        lineage = predictions_lineage(result, model)
        held = _head_holds(repo_id, "dataset", head, digests, DatasetCard, lineage, PREDICTIONS_LINEAGE, "data/")
        if held is not None:
            return PublishedRepo(repo_id=repo_id, repo_type="dataset", sha=head, url=url, created=False)
        title = f"hubflow: predictions of {model.repo_id}@{model.sha[:10]}"
        if cfg.review is ReviewMode.pr:
            num, pr_url, sha = hub.open_pull_request(repo_id, "dataset", {**files, "README.md": card.encode()}, title,
                                                     prefix="data/")
            return PublishedRepo(repo_id=repo_id, repo_type="dataset", sha=sha, url=url, created=True, pr_num=num,
                                 pr_url=pr_url)
        commit = hub.commit_exactly(repo_id, "dataset", {**files, "README.md": card.encode()}, title, parent=head,
                                    prefix="data/")
    return PublishedRepo(repo_id=repo_id, repo_type="dataset", sha=commit, url=url, created=commit != head)


def write_prediction_files(result: PipelineResult, out: Path) -> dict[str, Path]:
    """The predictions as `data/test-*.parquet` under `out` (input order, ClassLabel class ids) -> {repo path: file}."""
    import pyarrow.parquet as pq

    from .predict import read_predictions

    facts = result.checkpoint.facts
    table = kind_for(facts.task).prediction_files_table(read_predictions(result.predictions), facts)
    n = max(1, -(-table.num_rows // ROWS_PER_FILE))
    files = {}
    for i in range(n):
        path = f"data/test-{i:05d}-of-{n:05d}.parquet"
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(i * ROWS_PER_FILE, ROWS_PER_FILE), out / path)  # same rows -> same bytes
        files[path] = out / path
    return files


# ---- shared helpers ---------------------------------------------------------------------------------------------
def _head_holds(repo_id: str, repo_type: str, head: str, digests: dict[str, str], card_cls,
                expected: dict[str, Any], keys: tuple[str, ...], data_prefix: str | None = None) -> dict | None:
    """The head card's `hubflow:` lineage when the head holds these LFS files (by sha256) and that lineage matches
    `expected` on `keys`; None when it does not. With `data_prefix`, the files under it must be exactly `digests`'
    (no leftovers of another layout)."""
    if data_prefix is not None:
        listed = hub.list_files(repo_id, repo_type, head)
        if {f for f in listed if f.startswith(data_prefix)} != set(digests):
            return None
    if digests:
        found = hub.lfs_digests(repo_id, repo_type, head, list(digests))
        if any(found.get(p) != d for p, d in digests.items()):
            return None
    readme = hub.download(repo_id, "README.md", repo_type, head)
    if readme is None:
        return None
    lineage = card_cls.load(readme).data.to_dict().get("hubflow") or {}
    return lineage if all(lineage.get(k) == expected.get(k) for k in keys) else None


def _licence_files(base: PinnedRepo) -> dict[str, Path]:
    """The base model's licence and notice files (LICENSE, NOTICE, terms of use): many licences (Apache-2.0's
    NOTICE, the Gemma and Llama terms) ask that a redistributed derivative carries them."""
    folder = Path(hub.model_dir(base))
    names = ("LICENSE", "LICENCE", "NOTICE", "USE_POLICY")
    return {p.name: p for p in sorted(folder.iterdir())
            if p.is_file() and (p.name.upper().startswith(names) or "TERMS" in p.name.upper())}


def _license(base: PinnedRepo) -> str | None:
    license = hub.card_data(base.repo_id, base.sha).get("license")
    return license if isinstance(license, str) and license != "other" else None


def _check_weights(folder: Path, fingerprint: str) -> None:
    from .facts import weights_fingerprint

    if (actual := weights_fingerprint(folder)) != fingerprint:
        raise ValueError(f"{folder} holds weights {actual[:12]}…, not the run's {fingerprint[:12]}…: not published")


def _refuse_secrets(text: str, what: str) -> None:
    token = hub.hf_token()
    if token and token in text:
        raise ValueError(f"refusing to publish: {what} contains the Hub token")


def _name(repo_id: str) -> str:
    return repo_id.rstrip("/").split("/")[-1]


def _default_name(base_model: str, data_source: str) -> str:
    """`<base model name>-<dataset name>`, made a name the Hub accepts whatever the folder or repo is called: other
    characters become `-`, no `--` or `..`, no `-` or `.` at either end, short enough that `-predictions` fits."""
    name = re.sub(r"[^\w.-]+", "-", f"{_name(base_model)}-{_name(data_source.rstrip('/'))}")
    name = re.sub(r"([-.])[-.]+", r"\1", name)
    return name[:_DEFAULT_NAME_MAX].strip("-.") or "model"


def _qualified(repo_id: str, user: str) -> str:
    return repo_id if "/" in repo_id else f"{user}/{repo_id}"
