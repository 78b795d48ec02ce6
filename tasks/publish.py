"""Publish a run to the Hub: the model with its card, the predictions as a dataset (after tasks/gate.py promoted it).

PipelineResult + PublishConfig -> (GateDecision, tasks/gate.py) -> PublishedRepo (model) -> PublishedRepo (predictions).
Each publish is ONE `create_commit` whose LFS objects are uploaded before it, so a publish cut short leaves the repo at
its previous commit, never a partial one. Each is idempotent: when the head already holds this content (weights sha256
and the card's `hubflow:` lineage), no commit is made and the head's sha comes back with `created=False`.
Plain functions first (usable without Prefect), then the Prefect tasks: retries at the Hub edge, artifacts.
The token comes from tasks.hub at call time; it is never a parameter, and a card that contains it is refused.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard, ModelCard
from huggingface_hub.errors import EntryNotFoundError
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks import hub, store
from tasks.card import (
    MODEL_LINEAGE, PREDICTIONS_LINEAGE, model_card, model_lineage, predictions_card, predictions_lineage,
)
from tasks.config import PublishConfig
from tasks.refs import PinnedRepo, PipelineResult, PublishedRepo
from tasks.stages import NETWORK_RETRIES

PREDICTION_COLUMNS = ("row_id", "text", "label", "pred", "pred_label", "score")
ROWS_PER_FILE = 100_000


def load_result(summary_uri: str) -> PipelineResult:
    """The `PipelineResult` a pipeline run stored at `summary_uri`."""
    return PipelineResult.model_validate(store.read_json(summary_uri))


def target_repos(result: PipelineResult, cfg: PublishConfig) -> tuple[str, str]:
    """(model repo, predictions repo): the configured ids, else `<token user>/<base model>-<dataset>[-predictions]`."""
    user = hub.check_token()
    if user is None:
        raise hub.PreflightError("publishing needs a Hub token: set HF_TOKEN or $HUBFLOW_HF_TOKEN_BLOCK")
    data = result.dataset.repo_id if result.dataset else result.raw.source.rstrip("/")
    default = re.sub(r"[^\w.-]+", "-", f"{_name(result.base_model.repo_id)}-{_name(data)}")[:96]
    model = _qualified(cfg.repo_id or default, user)
    return model, _qualified(cfg.predictions_repo_id or f"{model}-predictions", user)


def run_tag(result: PipelineResult) -> str:
    """The tag a publish puts on its commit: the training run's id, else the weights' fingerprint."""
    return f"run-{result.flow_run_id[:8]}" if result.flow_run_id else f"model-{result.checkpoint.fingerprint[:12]}"


# ---- the model --------------------------------------------------------------------------------------------------
def push_model(result: PipelineResult, cfg: PublishConfig, repo_id: str | None = None) -> PublishedRepo:
    """Checkpoint folder + model card -> one commit on the model repo (created private per `cfg.private`), tagged."""
    client, ck = hub.api(), result.checkpoint
    repo_id = repo_id or target_repos(result, cfg)[0]
    url = str(client.create_repo(repo_id, private=cfg.private, exist_ok=True))
    head = client.repo_info(repo_id).sha
    tag = run_tag(result)
    single = store.exists(store.join(ck.uri, "model.safetensors"))
    weights = {"model.safetensors": ck.fingerprint} if single else {}  # sharded: the card's fingerprint vouches
    if _head_holds(repo_id, "model", head, weights, ModelCard, model_lineage(result), MODEL_LINEAGE):
        # Only names a commit the tag step of an interrupted publish may have missed; an existing tag is left as is.
        client.create_tag(repo_id, tag=tag, revision=head, exist_ok=True)
        return PublishedRepo(repo_id=repo_id, repo_type="model", sha=head, url=url, created=False, tag=tag)

    card = str(model_card(result, repo_id, tag, license=_license(result.base_model)))
    _refuse_secrets(card, "the model card")
    with tempfile.TemporaryDirectory() as tmp:
        folder = store.get_dir(ck.uri, tmp)
        _check_weights(folder, ck.fingerprint)
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        files.pop("README.md", None)
        ops = [CommitOperationAdd(path, str(p)) for path, p in files.items()]
        ops.append(CommitOperationAdd("README.md", card.encode()))
        commit = _commit(repo_id, "model", head, ops, f"hubflow: model {ck.fingerprint[:12]} ({tag})",
                         f"Fine-tuned from {result.base_model.repo_id}@{result.base_model.sha}.")
    created = commit != head  # the client skips a commit whose files are all unchanged and returns the head
    if created:
        client.create_tag(repo_id, tag=tag, revision=commit, exist_ok=True)
    return PublishedRepo(repo_id=repo_id, repo_type="model", sha=commit, url=url, created=created, tag=tag)


# ---- the predictions --------------------------------------------------------------------------------------------
def push_predictions(result: PipelineResult, model: PublishedRepo, cfg: PublishConfig,
                     repo_id: str | None = None) -> PublishedRepo:
    """Test-split predictions -> `data/test-0000i-of-0000N.parquet` + dataset card, one commit on a dataset repo."""
    client = hub.api()
    repo_id = repo_id or target_repos(result, cfg)[1]
    with tempfile.TemporaryDirectory() as tmp:
        files = write_prediction_files(result, Path(tmp))
        card = str(predictions_card(result, model, sorted(files)))
        _refuse_secrets(card, "the dataset card")
        url = str(client.create_repo(repo_id, repo_type="dataset", private=cfg.private, exist_ok=True))
        head = client.repo_info(repo_id, repo_type="dataset").sha
        digests = {path: _sha256(p) for path, p in files.items()}
        lineage = predictions_lineage(result, model)
        if _head_holds(repo_id, "dataset", head, digests, DatasetCard, lineage, PREDICTIONS_LINEAGE, "data/"):
            return PublishedRepo(repo_id=repo_id, repo_type="dataset", sha=head, url=url, created=False)
        ops = [CommitOperationAdd(path, str(p)) for path, p in files.items()]
        ops.append(CommitOperationAdd("README.md", card.encode()))
        commit = _commit(repo_id, "dataset", head, ops, f"hubflow: predictions of {model.repo_id}@{model.sha[:10]}",
                         None, stale_prefix="data/")
    return PublishedRepo(repo_id=repo_id, repo_type="dataset", sha=commit, url=url, created=commit != head)


def write_prediction_files(result: PipelineResult, out: Path) -> dict[str, Path]:
    """The predictions as `data/test-*.parquet` under `out` (input order, ClassLabel class ids) -> {repo path: file}."""
    import pyarrow.parquet as pq
    from datasets import ClassLabel, Features, Value

    from tasks.infer import read_predictions

    table = read_predictions(result.predictions)
    table = table.select([c for c in PREDICTION_COLUMNS if c in table.column_names])
    classes = ClassLabel(names=list(result.checkpoint.label_names))
    kinds = {"row_id": Value("int64"), "text": Value("string"), "label": classes, "pred": classes,
             "pred_label": Value("string"), "score": Value("float32")}
    table = table.cast(Features({c: kinds[c] for c in table.column_names}).arrow_schema)  # carries the class names
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
                expected: dict[str, Any], keys: tuple[str, ...], data_prefix: str | None = None) -> bool:
    """Does the head hold these LFS files (by sha256) and a card whose `hubflow:` lineage keys match `expected`?
    With `data_prefix`, the files under it must be exactly `digests`' (no leftovers of another layout)."""
    client = hub.api()
    if data_prefix is not None:
        listed = client.list_repo_files(repo_id, repo_type=repo_type, revision=head)
        if {f for f in listed if f.startswith(data_prefix)} != set(digests):
            return False
    if digests:
        info = {f.path: f for f in client.get_paths_info(repo_id, list(digests), repo_type=repo_type, revision=head)}
        if any(getattr(info.get(p), "lfs", None) is None or info[p].lfs.sha256 != d for p, d in digests.items()):
            return False
    try:
        readme = client.hf_hub_download(repo_id, "README.md", repo_type=repo_type, revision=head)
    except EntryNotFoundError:
        return False
    found = card_cls.load(readme).data.to_dict().get("hubflow") or {}
    return all(found.get(k) == expected.get(k) for k in keys)


def _commit(repo_id: str, repo_type: str, head: str, ops: list, message: str, description: str | None,
            stale_prefix: str = "") -> str:
    """One commit on top of `head` that adds `ops` and deletes what else is there (under `stale_prefix`)."""
    client = hub.api()
    keep = {op.path_in_repo for op in ops} | {".gitattributes"}
    stale = [f for f in client.list_repo_files(repo_id, repo_type=repo_type, revision=head)
             if f not in keep and f.startswith(stale_prefix)]
    ops = ops + [CommitOperationDelete(f) for f in sorted(stale)]
    # parent_commit: if someone else moved the branch since we looked, the Hub refuses (412) rather than mixing.
    info = client.create_commit(repo_id, ops, repo_type=repo_type, commit_message=message,
                                commit_description=description, parent_commit=head)
    return info.oid


def _license(base: PinnedRepo) -> str | None:
    card = hub.api().model_info(base.repo_id, revision=base.sha).card_data
    license = card.get("license") if card else None
    return license if isinstance(license, str) and license != "other" else None


def _check_weights(folder: Path, fingerprint: str) -> None:
    from tasks.train import weights_fingerprint

    if (actual := weights_fingerprint(folder)) != fingerprint:
        raise ValueError(f"{folder} holds weights {actual[:12]}…, not the run's {fingerprint[:12]}…: not published")


def _refuse_secrets(text: str, what: str) -> None:
    token = hub.hf_token()
    if token and token in text:
        raise ValueError(f"refusing to publish: {what} contains the Hub token")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _name(repo_id: str) -> str:
    return repo_id.rstrip("/").split("/")[-1]


def _qualified(repo_id: str, user: str) -> str:
    return repo_id if "/" in repo_id else f"{user}/{repo_id}"


# ---- Prefect tasks ----------------------------------------------------------------------------------------------
@task(name="load-run")
def load_run(summary_uri: str) -> PipelineResult:
    """The stored PipelineResult of a training run."""
    return load_result(summary_uri)


@task(name="publish-model", cache_policy=NO_CACHE, **NETWORK_RETRIES)
def publish_model(result: PipelineResult, publish: PublishConfig) -> PublishedRepo:
    """Checkpoint + card -> one tagged commit on the model repo (none when unchanged); records the sha."""
    published = push_model(result, publish)
    _record(published, "published-model", "Published model")
    return published


@task(name="publish-predictions", cache_policy=NO_CACHE, **NETWORK_RETRIES)
def publish_predictions(result: PipelineResult, model: PublishedRepo, publish: PublishConfig) -> PublishedRepo:
    """Test predictions + card -> one commit on the predictions dataset repo (none when unchanged)."""
    published = push_predictions(result, model, publish)
    _record(published, "published-predictions", "Published predictions")
    return published


def _record(published: PublishedRepo, key: str, description: str) -> None:
    state = "new commit" if published.created else "unchanged (no new commit)"
    tag = f"`{published.tag}`" if published.tag else "—"
    create_markdown_artifact(key=key, description=description, markdown="\n".join([
        "| repo | type | commit | tag | status |", "|---|---|---|---|---|",
        f"| [{published.repo_id}]({published.url}/tree/{published.sha}) | {published.repo_type} | "
        f"`{published.sha}` | {tag} | {state} |", ""]))
