"""`hubflow hub serve` / `python -m localhub serve`: the command line of localhub."""

from __future__ import annotations

import argparse
import os

from .server import ORGS_ENV, TOKENS_ENV, parse_tokens, serve
from .teams import parse_orgs


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a Hugging Face Hub-compatible API on loopback",
        description="Serve a Hub-compatible API. Point any HF client at it with HF_ENDPOINT=http://HOST:PORT "
        "(and HF_HUB_DISABLE_XET=1 for uploads).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; keep it on loopback)")
    p.add_argument("--port", type=int, default=8900, help="port to bind (default 8900)")
    p.add_argument("--data", required=True, help="data directory: blobs + SQLite metadata; survives restarts")
    p.add_argument(
        "--token", action="append", default=[], metavar="USER:TOKEN:ROLE",
        help="a user, its bearer token and role (read|write); repeatable. A user owns the namespace of its name. "
        f"Also read from ${TOKENS_ENV} (comma-separated), which keeps tokens out of the process list.",
    )
    p.add_argument(
        "--org", action="append", default=[], metavar="NAME:USER=ROLE,USER=ROLE",
        help="an organization and its members' roles (read|write|admin); repeatable. Write and admin members create "
        f"and push repos in its namespace, read members see its private repos. Also read from ${ORGS_ENV} "
        "(orgs separated by ';').",
    )
    p.add_argument("--seed", action="append", default=[], metavar="TYPE:NAMESPACE/NAME=FOLDER",
                   help="publish a local folder as a public repo at start unless it exists (TYPE: model, dataset or "
                   "space); repeatable")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> None:
    specs = list(args.token) + [s for s in os.environ.get(TOKENS_ENV, "").split(",") if s]
    orgs = list(args.org) + [s for s in os.environ.get(ORGS_ENV, "").split(";") if s]
    serve(args.host, args.port, args.data, parse_tokens(specs), seed=args.seed, orgs=parse_orgs(orgs))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="localhub", description="A Hugging Face Hub-compatible server")
    sub = parser.add_subparsers(required=True)
    add_serve_parser(sub)
    args = parser.parse_args(argv)
    args.func(args)
