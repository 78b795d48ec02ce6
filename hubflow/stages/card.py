"""Model and dataset cards for a published run: Hub metadata in the front matter, the story in the body.

PipelineResult (+ the evaluation report) -> `ModelCard` (base model and dataset pinned to shas, model-index with the
test metrics, hyper-parameters, hardware, the kind's report tables, the Prefect run, a usage snippet) and, for the
predictions, a `DatasetCard`. What depends on the task (summary, metrics, usage, columns) comes from its kind.
Lineage is also kept machine-readable under the `hubflow:` front-matter key, which is what publish compares to decide
that a repo already holds this exact content. Pure: no Hub calls, no token.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from .. import __version__
from ..doors import store
from ..kinds import kind_for
from ..refs import GateDecision, ModelFacts, PipelineResult, PublishedRepo, SweepRecord

# Front-matter keys that identify what a model repo holds; publish compares them (see tasks/publish.py). The flow
# run id is recorded but not compared: a cached rerun yields the same model and must not make a new commit.
MODEL_LINEAGE = ("base_model", "base_model_sha", "dataset", "dataset_sha", "model_fingerprint", "test_data_fingerprint")
PREDICTIONS_LINEAGE = ("model_repo", "model_sha", "model_fingerprint", "test_data_fingerprint", "rows")


def model_lineage(result: PipelineResult, fingerprint: str | None = None) -> dict[str, Any]:
    """The `hubflow:` front-matter block of the model card (`fingerprint`: of the weights published, when they are
    an adapter rather than the model)."""
    return {
        "base_model": result.base_model.repo_id,
        "base_model_sha": result.base_model.sha,
        "dataset": result.dataset.repo_id if result.dataset else result.raw.source,
        "dataset_sha": result.dataset.sha if result.dataset else result.raw.source_sha,
        "dataset_fingerprint": result.raw.fingerprint,
        "model_fingerprint": fingerprint or result.checkpoint.fingerprint,
        "test_data_fingerprint": result.predictions.data_fingerprint,
        "flow_run_id": result.flow_run_id,
        "hubflow_version": __version__,
    }


def model_card(result: PipelineResult, repo_id: str, revision: str, facts: ModelFacts | None = None,
               fingerprint: str | None = None, license: str | None = None,
               report: dict[str, Any] | None = None, decision: GateDecision | None = None) -> ModelCard:
    """The model repo's README.md; `revision` (a tag or sha) goes into the usage snippet. `facts` and `fingerprint`
    are those of the folder published (an adapter's name its base), by default the run's model."""
    facts = facts or result.checkpoint.facts
    report = report if report is not None else store.read_json(result.evaluation.uri)
    kind = kind_for(result.checkpoint.facts.task)
    data_id, data_sha, data_name = _dataset(result)
    split = _test_split(result)
    common = dict(task_type=kind.pipeline_tag, dataset_type=data_id,
                  dataset_name=data_name, dataset_config=result.config.data.config_name, dataset_split=split,
                  dataset_revision=data_sha)
    metrics = result.evaluation.metrics
    library = kind.card_metadata(facts)
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        base_model=result.base_model.repo_id,
        base_model_relation=library["base_model_relation"],
        datasets=[result.dataset.repo_id] if result.dataset else None,
        license=license,
        library_name=library["library_name"],
        pipeline_tag=kind.pipeline_tag,
        tags=["hubflow", kind.pipeline_tag],
        eval_results=[EvalResult(**common, **r) for r in kind.card_eval_results(metrics)],
        hubflow=model_lineage(result, fingerprint),
    )
    body = _model_body(result, repo_id, revision, report, facts, fingerprint or result.checkpoint.fingerprint)
    if result.sweep is not None:
        body += _sweep(result.sweep)
    if decision is not None:
        body += _promotion(decision)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def _model_body(result: PipelineResult, repo_id: str, revision: str, report: dict[str, Any], facts: ModelFacts,
                fingerprint: str) -> str:
    base, ck, cfg = result.base_model, result.checkpoint, result.config
    kind = kind_for(ck.facts.task)
    data_id, data_sha, _ = _dataset(result)
    m = result.evaluation.metrics
    run = result.flow_run_id or "(not run under Prefect)"
    run_link = f"[{run}]({result.flow_run_url})" if result.flow_run_url else f"`{run}`"
    hyper = kind.card_hyperparameters(cfg)
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"Fine-tuned from [`{base.repo_id}`]({_hub_path(base.repo_id)}) on `{data_id}` by hubflow {__version__}. "
        + kind.card_summary(ck.facts, m, int(m.get("test_rows", report.get("rows", 0)))),
        "",
        "## Usage",
        "",
        "```python",
        kind.card_usage(repo_id, revision, facts),
        "```",
        "",
        "A private repo needs a token with read access: log in (`hf auth login`) or set `HF_TOKEN`.",
        "",
        "## Lineage",
        "",
        "| input | repo | commit |",
        "|---|---|---|",
        f"| base model | `{base.repo_id}` (asked for `{base.revision}`) | `{base.sha}` |",
        f"| dataset | `{data_id}`" + (f" (config `{cfg.data.config_name}`)" if cfg.data.config_name else "")
        + f" | `{data_sha or 'n/a'}` |",
        "",
        "| split | taken from | rows |",
        "|---|---|---|",
        *[f"| {role} | {src} | {rows} |" for role, src, rows in _splits(result)],
        "",
        f"Weights sha256 ({kind.card_metadata(facts)['weights']} fingerprint): `{fingerprint}`.",
        "",
        "## Training",
        "",
        f"Trained on {ck.hardware} in {ck.train_seconds:.1f} s. Best validation: "
        + ", ".join(f"{k} {v:.4f}" for k, v in sorted(ck.metrics.items())) + ".",
        "",
        "| hyper-parameter | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in hyper.items()],
        "",
        "## Evaluation (test split)",
        "",
        kind.render(report, None)[0],
        "## Provenance",
        "",
        f"Produced by the Prefect flow run {run_link} with hubflow {__version__}. The `hubflow:` front-matter "
        "keys repeat the lineage in machine-readable form." + _tracked(result),
        "",
    ]
    return "\n".join(lines)


def _sweep(s: SweepRecord) -> str:
    """How the hyper-parameters were chosen: the sweep, its space, its trials, the best one."""
    run = f" (Prefect flow run `{s.flow_run_id}`)" if s.flow_run_id else ""
    lines = ["## Hyper-parameter sweep", "",
             f"This model is trial {s.best_trial} of the sweep `{s.study}`{run}: {s.trials} trials ({s.complete} "
             f"complete, {s.pruned} pruned early, {s.failed} failed), searched with Optuna's TPE sampler and ranked by "
             f"validation {s.metric} ({s.direction} is better); the best reached {s.best_value:.4f}. The study is "
             f"kept in `{s.storage}`.", "",
             "| parameter | searched over | chosen |", "|---|---|---|",
             *[f"| {k} | {space} | {s.best_params.get(k)} |" for k, space in s.space.items()], ""]
    return "\n".join(lines)


def _tracked(result: PipelineResult) -> str:
    """The card's link to the run's MLflow run (tracking.backend=mlflow), or nothing. A local store's path is not
    named: it means nothing on the Hub."""
    t = result.tracking
    if t is None or t.run_id is None:
        return ""
    run = f"[{t.run_id}]({t.url})" if t.url else f"`{t.run_id}`"
    return f" Tracked in MLflow as run {run} of the experiment `{t.experiment}`."


def _promotion(d: GateDecision) -> str:
    """Why this model was published: the gate's decision, its margin and p-value."""
    lines = ["## Promotion", "", d.reason[0].upper() + d.reason[1:] + ".", ""]
    if d.p_value is not None:
        lines += ["| | value |", "|---|---|", f"| metric | {d.metric} |", f"| this model | {d.challenger:.4f} |",
                  f"| champion (`{(d.champion_sha or '')[:10]}`) | {d.champion:.4f} |",
                  f"| improvement | {d.improvement:+.4f} (margin {d.min_improvement:g}) |",
                  f"| paired bootstrap p | {d.p_value:.4f} (confidence {d.confidence:g}) |", ""]
    return "\n".join(lines)


def predictions_lineage(result: PipelineResult, model: PublishedRepo) -> dict[str, Any]:
    """The `hubflow:` front-matter block of the predictions dataset card."""
    data_id, data_sha, _ = _dataset(result)
    return {
        "model_repo": model.repo_id,
        "model_sha": model.sha,
        "model_fingerprint": result.checkpoint.fingerprint,
        "source_dataset": data_id,
        "source_dataset_sha": data_sha,
        "test_data_fingerprint": result.predictions.data_fingerprint,
        "rows": result.predictions.rows,
        "flow_run_id": result.flow_run_id,
    }


def predictions_card(result: PipelineResult, model: PublishedRepo, files: list[str]) -> DatasetCard:
    """The predictions dataset's README.md: what model (repo@sha) predicted what data (dataset@sha)."""
    data_id, data_sha, _ = _dataset(result)
    rows = result.predictions.rows
    kind = kind_for(result.checkpoint.facts.task)
    card_data = DatasetCardData(
        pretty_name=f"Predictions of {model.repo_id}",
        task_categories=[kind.pipeline_tag],
        source_datasets=[result.dataset.repo_id] if result.dataset else None,
        size_categories=[_size_category(rows)],
        tags=["hubflow", "predictions"],
        configs=[{"config_name": "default", "data_files": [{"split": "test", "path": "data/test-*.parquet"}]}],
        hubflow=predictions_lineage(result, model),
    )
    body = "\n".join([
        f"# Predictions of {model.repo_id}",
        "",
        f"{rows} rows of the test split of `{data_id}`@`{data_sha or 'n/a'}`, in input order, as predicted by "
        f"[`{model.repo_id}`]({_hub_path(model.repo_id)}) at commit `{model.sha}`.",
        "",
        "| column | meaning |",
        "|---|---|",
        *[f"| {name} | {meaning} |" for name, meaning in kind.prediction_columns(result.checkpoint.facts)],
        "",
        f"Files: {', '.join(f'`{f}`' for f in files)}.",
        "",
    ])
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def _dataset(result: PipelineResult) -> tuple[str, str | None, str]:
    """(id, sha, short name) of the training data: a Hub dataset, or the store/local source it was read from."""
    if result.dataset:
        return result.dataset.repo_id, result.dataset.sha, result.dataset.repo_id.split("/")[-1]
    return result.raw.source, result.raw.source_sha, result.raw.source.rstrip("/").split("/")[-1]


def _test_split(result: PipelineResult) -> str:
    split = result.config.data.test_split
    return split if split and split in result.raw.splits else "test"


def _splits(result: PipelineResult) -> list[tuple[str, str, int]]:
    """(role, where its rows came from, rows) for train, validation, test, as preprocess made them."""
    cfg, pre = result.config.data, result.config.preprocess
    named = {"train": cfg.train_split, "validation": cfg.validation_split, "test": cfg.test_split}
    out = []
    for role, source in named.items():
        if role not in result.tokenized.splits:
            continue
        if role == "train" or (source and source in result.raw.splits):
            origin = f"`{source}`"
        else:
            origin = f"carved from `{cfg.train_split}` ({getattr(pre, f'{role}_fraction'):.0%}, seed {pre.split_seed})"
        out.append((role, origin, result.tokenized.splits[role]))
    return out


def _hub_path(repo_id: str) -> str:
    # Relative to the Hub the card is rendered on: the same card reads right on huggingface.co or a private hub.
    return f"/{repo_id}"


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "n>1M"
