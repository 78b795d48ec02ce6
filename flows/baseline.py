"""The base model on a recipe's test split, before any fine-tuning: the "before" of a before/after comparison.

    from hubflow.flows.baseline import baseline
    base = baseline(config)              # then pipeline(config): both score the same test rows

pin -> pull dataset -> pull model -> preprocess are the pipeline's own tasks with the pipeline's inputs, so a pipeline
run that follows finds them in Prefect's cache (and the store) and scores the fine-tuned model on exactly these rows;
then batch inference and evaluation of the base model's own weights. The demos that print a before/after
(hubflow/ops/demo_llm.py, hubflow/ops/demo_embeddings.py) call it; any kind's recipe works.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from hubflow.doors import store
from hubflow.kinds import config_form
from hubflow.refs import EvalRef, PinnedRepo, PredictionsRef, Ref
from hubflow.stages.evaluate import evaluate_predictions
from hubflow.stages.facts import weights_fingerprint
from hubflow.stages.predict import predict
from hubflow.tasks import pipeline as stages
from hubflow.tokenize import sha

PipelineConfig = config_form()  # the run form: the same typed config as the pipeline's


class BaselineResult(Ref):
    """The base model at its sha, its predictions on the test split and their evaluation; the flow run that made
    them."""

    flow_run_id: str | None
    base_model: PinnedRepo
    predictions: PredictionsRef
    evaluation: EvalRef


# No log_prints: with print patched, dill's `dis` capture (datasets' hashing in preprocess) lands in the log.
@flow(name="hubflow-baseline")
def baseline(config: PipelineConfig) -> BaselineResult:
    """Score `config.model` as it is (no training) on the test split `config` describes."""
    base_model, dataset = stages.pin_inputs(config.model, config.data)
    raw = stages.pull_dataset(config.data, dataset, config.task, config.artifact_store)
    model_dir = stages.pull_model(base_model, config.model.allow_pickle_weights)
    tokenized = stages.preprocess(raw, base_model, config.preprocess, config.data, config.task, config.artifact_store)
    # Predict and evaluate are the library's verbs, not the pipeline's tasks: those take a trained checkpoint (with
    # its history and hardware), which a base model has not. Their folder is keyed by the weights, the data and the
    # inference settings, and prediction skips finished shards, so a rerun redoes nothing.
    fingerprint = weights_fingerprint(model_dir)
    out = store.join(config.artifact_store, "baseline", sha({
        "model": fingerprint, "data": tokenized.fingerprint,
        "inference": config.inference.model_dump(mode="json")})[:24])
    predictions = predict(model_dir, fingerprint, tokenized, "test", config.inference, store.join(out, "predictions"))
    evaluation = evaluate_predictions(predictions, tokenized.facts, store.join(out, "evaluation"))
    get_run_logger().info("base model %s@%s on the test split: %s", base_model.repo_id, base_model.sha[:10],
                          {k: round(v, 4) for k, v in evaluation.metrics.items()})
    return BaselineResult(flow_run_id=str(flow_run.get_id()), base_model=base_model, predictions=predictions,
                          evaluation=evaluation)
