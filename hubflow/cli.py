"""The `hubflow` command. Heavy imports happen inside the commands, so `--help` is instant.

    hubflow demo [--workdir DIR]                   offline demo: localhub + MiniLM + the pipeline
    hubflow run RECIPE.yaml [--set key=value ...]  run any recipe
    hubflow hub serve --port P --data DIR ...      the Hub-compatible server (localhub)
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hubflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True, dest="command")

    demo = sub.add_parser("demo", help="run the whole pipeline offline on a local Hub with a real pretrained model")
    demo.add_argument("--workdir", default="./hubflow-demo", help="everything is written here (default ./hubflow-demo)")
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

    args = parser.parse_args(argv)
    args.func(args)


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.workdir, args.set)


def _run(args: argparse.Namespace) -> None:
    from tasks.config import load_recipe

    try:
        config = load_recipe(args.recipe, args.set)
    except (ValueError, FileNotFoundError) as e:  # pydantic's ValidationError is a ValueError: names the field
        sys.exit(f"hubflow: invalid recipe {args.recipe}: {e}")
    from flows.pipeline import pipeline

    result = pipeline(config)
    print(json.dumps(result.model_dump(mode="json")["evaluation"]["metrics"], indent=2))
    print(f"summary: {result.summary_uri}")
