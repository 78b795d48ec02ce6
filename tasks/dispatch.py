"""Run a GPU stage here or on the gpu work pool: the pipeline's one seam between the two execution modes.

`local` calls the stage's task in this flow run. `pools` starts a run of the stage's deployment with
`run_deployment` (a subflow in the UI), waits for it, propagates failure and cancellation, and reads its
persisted result: refs only cross the wire, and the child's result storage must be shared (s3://).

Batch inference fans out: its shards are cut into as many contiguous parts as `execution.parallelism` (default: the
predict pool's online workers, capped by the pool's concurrency limit), one predict run per part, all started at once
and each retried alone if it fails; finished shards are never redone (a part skips the shards it finds), and the
parts' manifests are merged into one predictions ref.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from hubflow.config import ExecutionConfig, ExecutionMode, InferenceConfig, TrainConfig
from hubflow.refs import CheckpointRef, ObserveSpec, PinnedRepo, PredictionsPart, PredictionsRef, TokenizedRef
from hubflow.tasks import pipeline as stages

R = TypeVar("R", bound=BaseModel)


class DispatchError(RuntimeError):
    """A dispatched stage run failed, crashed, was cancelled or timed out."""


class DispatchCancelled(DispatchError):
    """A dispatched stage run was cancelled: somebody meant it, so it is not retried."""


def train(tokenized: TokenizedRef, base_model: PinnedRepo, cfg: TrainConfig, artifact_store: str,
          execution: ExecutionConfig, allow_pickle: bool = False, observe: ObserveSpec | None = None) -> CheckpointRef:
    """The train stage here or as a run of the gpu pool's train deployment; `observe` (who watches the training:
    a tracker, a sweep's pruner) travels with it."""
    if execution.mode is ExecutionMode.local:
        return stages.train(tokenized, base_model, cfg, artifact_store, allow_pickle, observe)
    params = {"tokenized": tokenized, "base_model": base_model, "train": cfg, "artifact_store": artifact_store,
              "allow_pickle": allow_pickle}
    if observe is not None:  # only then: a train deployment registered before `observe` existed still takes the run
        params["observe"] = observe
    return _run(execution.train_deployment, params, CheckpointRef, execution.timeout_seconds)


def predict(checkpoint: CheckpointRef, tokenized: TokenizedRef, split: str, cfg: InferenceConfig,
            artifact_store: str, execution: ExecutionConfig) -> PredictionsRef:
    if execution.mode is ExecutionMode.local:
        return stages.predict(checkpoint, tokenized, split, cfg, artifact_store)
    params = {"checkpoint": checkpoint, "tokenized": tokenized, "split": split, "inference": cfg,
              "artifact_store": artifact_store}
    shards = -(-tokenized.splits[split] // cfg.shard_size)
    parts = min(shards, execution.parallelism or _online_capacity(execution.predict_deployment))
    if parts <= 1:
        return _run(execution.predict_deployment, params, PredictionsRef, execution.timeout_seconds)
    print(f"batch inference over {split}: {shards} shards in {parts} parts on {execution.predict_deployment}")
    futures = [
        predict_part.with_options(task_run_name=f"predict-part-{k + 1}-of-{parts}").submit(
            execution.predict_deployment, {**params, "part": k, "parts": parts}, execution.timeout_seconds)
        for k in range(parts)
    ]
    return stages.merge_predictions([f.result() for f in futures])


def _not_cancelled(task, task_run, state) -> bool:
    try:
        state.result()
    except DispatchCancelled:
        return False
    except BaseException:  # noqa: BLE001 - a crash, a failure, a timeout: worth another worker
        return True
    return False


# A part that fails or crashes (a worker lost, a preempted GPU host) is started again on its own; its finished shards
# stay. One that was cancelled is not: the cancellation is passed on to the run that dispatched it.
@task(name="predict-part-run", retries=2, retry_delay_seconds=5, retry_condition_fn=_not_cancelled,
      cache_policy=NO_CACHE)
def predict_part(deployment: str, parameters: dict[str, Any], timeout: int) -> PredictionsPart:
    """Run one part of a batch inference as a run of the predict deployment and wait for it."""
    return _run(deployment, parameters, PredictionsPart, timeout)


def _online_capacity(deployment: str) -> int:
    """How many runs the deployment's work pool can take at once: its online workers, at most its concurrency limit
    (at least 1: with nobody online yet, the one run waits for a worker like any other)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(client.read_deployment_by_name(deployment).work_pool_name)
        online = client.read_workers_for_work_pool(
            pool.name, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"])))
    return max(1, min(len(online), pool.concurrency_limit or len(online)))


def _run(deployment: str, parameters: dict[str, Any], result_type: type[R], timeout: int) -> R:
    from prefect.deployments import run_deployment

    run = run_deployment(
        deployment,
        parameters={k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in parameters.items()},
        timeout=timeout,
        poll_interval=2,
    )
    state = run.state
    if state is None or not state.is_completed():
        name = state.name if state else "no state"
        error = DispatchCancelled if state is not None and state.is_cancelled() else DispatchError
        raise error(f"{deployment} run {run.name} ({run.id}) ended {name}: {state.message if state else ''}")
    result = state.result()
    return result if isinstance(result, result_type) else result_type.model_validate(result)
