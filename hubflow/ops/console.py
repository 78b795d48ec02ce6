"""One terminal style for every `hubflow` command: hubflow's own lines, one progress line per long stage, a failure's
cause once with its stage, no traceback. `--verbose` brings back the libraries' bars and reports and Prefect's
engine lines; the run's log in the Prefect UI keeps everything, tracebacks included, either way.

    quiet_environment(verbose)    before prefect, huggingface_hub, datasets or transformers is imported
    console_logging()             hubflow's logger on the terminal, formatted like Prefect's
    prefect_console(verbose)      Prefect's console handlers: no tracebacks; quiet: no engine chatter either
    run_failure(state)            "in <stage>: <cause>" for a flow run that did not complete
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

# Offline and quiet unless the user set them: Prefect's telemetry (an error on every offline start), the Hub
# client's telemetry, hubflow's own log lines in the run log, and time for a fresh embedded database to migrate on a
# slow machine (Prefect's 20 s default is too tight on 2 cores).
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "hubflow",
    # The embedded server's SQLite is shared by the API and its services; on a busy laptop the 10 s default gives
    # up with "database is locked" (a traceback that reaches the terminal) where a longer wait succeeds.
    "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
}
# The libraries' own progress bars ("Fetching 12 files", "Creating parquet from Arrow format", "Loading weights",
# "Writing model shards") and transformers' LOAD REPORT table: off unless --verbose. They are environment
# variables, not calls, so the flow runs a worker or `accelerate launch` starts inherit them.
LIBRARY_QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub's bars, and transformers' (it asks huggingface_hub)
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",  # the LOAD REPORT is a warning
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
    "TQDM_DISABLE": "1",  # any other tqdm bar (accelerate, evaluate)
}


def quiet_environment(verbose: bool = False) -> None:
    """Apply QUIET_ENV (and, unless verbose, LIBRARY_QUIET_ENV) where the user has not chosen."""
    for key, value in {**QUIET_ENV, **({} if verbose else LIBRARY_QUIET_ENV)}.items():
        os.environ.setdefault(key, value)


def console_logging() -> None:
    """hubflow's own lines ("data …: 2000 rows; columns …", "reused 3 of 4 shards") in the terminal, formatted like
    Prefect's; Prefect sends them to the run's log in the UI as well (PREFECT_LOGGING_EXTRA_LOGGERS)."""
    logger = logging.getLogger("hubflow")
    if not any(getattr(h, "_hubflow_console", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d | %(levelname)-7s | hubflow - %(message)s",
                                               "%H:%M:%S"))
        handler._hubflow_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the root logger's own console handler would print every line twice


_PREFECT_DIR = str(Path(logging.__file__).parent)  # replaced by prefect's folder once it is imported


class _NoTraceback(logging.Formatter):
    """Each message line without its traceback: the run's log in the UI keeps the traceback."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info = record.exc_text = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


class _OwnLinesOnly(logging.Filter):
    """On the terminal: what hubflow's code logs or prints inside a run (progress, data lines, `print`), and
    Prefect's own warnings; not the engine's per-task chatter ("Created task run", "Finished in state Completed()")
    nor its failure chain (task, flow, each with the cause), which the command reports once with the stage."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.pathname.startswith(_PREFECT_DIR) or record.funcName == "print_as_log":
            return True
        engine = record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
        return record.levelno >= logging.WARNING and not (engine and record.levelno >= logging.ERROR)


def prefect_console(verbose: bool = False) -> None:
    """Prefect's console handlers print a failure's traceback at every level that sees it (task, flow): the terminal
    shows each message line without it; unless verbose, only hubflow's own lines and Prefect's warnings."""
    global _PREFECT_DIR
    import prefect
    from prefect.logging.configuration import PROCESS_LOGGING_CONFIG, setup_logging

    _PREFECT_DIR = str(Path(prefect.__file__).parent)
    if not PROCESS_LOGGING_CONFIG:  # Prefect configures its handlers on first use; do it now, then adjust them
        setup_logging()
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):  # "": the root, where Prefect prints
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
                continue
            if not isinstance(handler.formatter, _NoTraceback):
                handler.setFormatter(_NoTraceback(handler.formatter or logging.Formatter()))
            if not verbose and not any(isinstance(f, _OwnLinesOnly) for f in handler.filters):
                handler.addFilter(_OwnLinesOnly())


def run_failure(state) -> str:
    """`in <task>: <cause>` for a flow run's final state (the first failed task run names the stage)."""
    message = (state.message or state.name).removeprefix("Flow run encountered an exception: ")
    return f"{failed_stage(state)}{message}"


def failed_stage(state) -> str:
    """`in <task>: ` for the first failed task run of a flow run, when there is one."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    try:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC)
    except Exception:  # noqa: BLE001 - naming the stage is a courtesy; the cause is what matters
        return ""
    failed = [r for r in runs if r.state and r.state.is_failed()]
    return f"in {failed[0].name.rsplit('-', 1)[0]}: " if failed else ""


class RunFailed(RuntimeError):
    """A flow run a command started did not complete; the message is its cause with the stage, in one line."""
