"""What every hubflow task shares: retries at network edges, stage keys, progress artifacts.

    NETWORK_RETRIES     retries=3 with backoff, only for transient failures (connection errors, 429, 5xx)
    cache_key(stage)    a Prefect cache_key_fn: the stage key of the task's inputs, code and task kind
    out_uri(...)        the stage's output folder in the store, named by the same key
    Progress            a Prefect progress artifact fed by the library's `on_progress(fraction, message)` callbacks
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext

from hubflow.caching import stage_key
from hubflow.doors import store
from hubflow.kinds import kind_for


def _transient(task, task_run, state) -> bool:
    """Retry network hiccups (connection errors, 429, 5xx), never bad input: that fails the same way every time."""
    import httpx
    import httpx2  # huggingface_hub's transport
    from huggingface_hub.errors import HfHubHTTPError

    try:
        state.result()
    except (httpx.TransportError, httpx2.TransportError, ConnectionError, TimeoutError):
        return True
    except HfHubHTTPError as e:
        return e.response is not None and (e.response.status_code == 429 or e.response.status_code >= 500)
    except BaseException:  # noqa: BLE001 - anything else is not worth a retry
        return False
    return False


# The library logs what it did at INFO ("data …: 2000 rows; columns …", "reused 3 of 4 prediction shards"). Prefect
# gives the `hubflow` logger its handlers (PREFECT_LOGGING_EXTRA_LOGGERS) but not a level, and the root's WARNING
# would drop those lines.
logging.getLogger("hubflow").setLevel(logging.INFO)

NETWORK_RETRIES = dict(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=_transient)

# The modules whose code computes each stage's output; the task kind's own package is added (see `_modules`).
MODULES: dict[str, tuple[str, ...]] = {
    "pull-dataset": ("hubflow.doors.hub", "hubflow.stages.pull"),
    "preprocess": ("hubflow.tokenize",),
    # every module that shapes the trained model: the loop, resume, and (via the kind) loading, collating and the
    # validation scores that choose the best checkpoint
    "train": ("hubflow.stages.train", "hubflow.stages.resume"),
    "predict": ("hubflow.stages.predict", "hubflow.devices"),
    "evaluate": ("hubflow.stages.evaluate",),
}


def _task_of(inputs: dict[str, Any]) -> str:
    """The task kind a stage runs for, from its inputs: an explicit `task`, or the facts a ref carries."""
    if "task" in inputs:
        return inputs["task"]
    for value in inputs.values():
        facts = getattr(value, "facts", None)
        if facts is not None:
            return facts.task
    raise ValueError(f"no task kind among the inputs {sorted(inputs)}")


def _modules(stage: str, inputs: dict[str, Any]) -> tuple[str, ...]:
    return MODULES[stage] + kind_for(_task_of(inputs)).modules


def _keyed(stage: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs that decide a stage's output. Batch inference's batch size and token budget change how rows are
    padded, not a classifier's predictions (attention masks): changing only those reuses every shard."""
    inputs = {k: v for k, v in inputs.items() if k != "observe"}  # who watches a stage never changes its output
    cfg = inputs.get("cfg")
    if stage == "predict" and cfg is not None and kind_for(_task_of(inputs)).batch_invariant:
        return {**inputs, "cfg": cfg.model_dump(mode="json", exclude={"batch_size", "max_tokens_per_batch"})}
    return inputs


def cache_key(stage: str) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    def key(_: TaskRunContext, parameters: dict[str, Any]) -> str:
        return f"{stage}-{stage_key(stage, _modules(stage, parameters), _keyed(stage, parameters))}"

    return key


def out_uri(stage: str, parameters: dict[str, Any]) -> str:
    """`{store}/{stage}/{key}` for a task's full `parameters` (artifact_store among them): the key is the task's
    cache key, so a cached result always names its folder, and `hubflow store gc` can drop both together."""
    key = stage_key(stage, _modules(stage, parameters), _keyed(stage, parameters))
    return store.join(parameters["artifact_store"], stage, key)


class Progress:
    """The stages' `on_progress(fraction, message)` callbacks -> a Prefect progress artifact (every 2 s at most) and
    a line in the run log and the terminal (every 10 s at most, and the last one): `train 40% step 20/51 loss 0.53,
    31.2 samples/s, ETA 0:42`. Messages that are events (a checkpoint, a resume) are logged whenever they come."""

    ARTIFACT_EVERY, LOG_EVERY = 2.0, 10.0

    def __init__(self, key: str, description: str, stage: str):
        self.id = create_progress_artifact(progress=0.0, key=key, description=description)
        self.stage, self.last_artifact, self.last_log = stage, 0.0, time.monotonic()

    def __call__(self, fraction: float, message: str = "") -> None:
        from prefect import get_run_logger

        now, fraction = time.monotonic(), min(max(fraction, 0.0), 1.0)
        routine = message.startswith(("step ", "shard "))
        if not routine or fraction >= 1.0 or now - self.last_log >= self.LOG_EVERY:
            self.last_log = now
            get_run_logger().info("%s %3.0f%% %s", self.stage, 100 * fraction, message)
        if fraction < 1.0 and now - self.last_artifact < self.ARTIFACT_EVERY:
            return
        self.last_artifact = now
        update_progress_artifact(self.id, progress=round(100 * fraction, 1))


