"""`hubflow hub serve` / `python -m localhub serve`: the command line of localhub."""

from __future__ import annotations

import argparse
import os
import socket
import sys

from .ports import listen
from .sandbox import UNSAFE_ENV
from .seed import parse_seed
from .server import ORGS_ENV, PRIVATE_WEBHOOKS_ENV, TOKENS_ENV, env_flag, parse_tokens, read_token_file, serve
from .teams import parse_orgs


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a Hugging Face Hub-compatible API on loopback",
        description="Serve a Hub-compatible API. Point any HF client at it with HF_ENDPOINT=http://HOST:PORT "
        "(and HF_HUB_DISABLE_XET=1 for uploads).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; keep it on loopback)")
    p.add_argument("--port", type=int, default=8900, help="port to bind (default 8900; 0: any free port, which the "
                   "log's `serving http://HOST:PORT` line names)")
    p.add_argument("--fd", type=int, metavar="N",
                   help="serve on the listening socket inherited as file descriptor N instead of binding --port (a "
                   "parent that bound the port first, as LocalHub does, so nobody can take it in between)")
    p.add_argument("--data", required=True, help="data directory: blobs + SQLite metadata; survives restarts")
    p.add_argument(
        "--token-file", action="append", default=[], metavar="PATH",
        help="a file of USER:TOKEN:ROLE lines (ROLE read|write; # comments), readable by its owner only (chmod 600: "
        "others are refused). The way to give a long-running server its users: a token on the command line or in "
        "the environment can be read through /proc. Repeatable.",
    )
    p.add_argument(
        "--token", action="append", default=[], metavar="USER:TOKEN:ROLE",
        help="a user, its bearer token and role (read|write); repeatable; for interactive use (the command line is "
        f"visible to every local user: prefer --token-file). A user owns the namespace of its name. Also read from "
        f"${TOKENS_ENV} (comma-separated; visible in /proc/<pid>/environ).",
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
    p.add_argument("--unsafe-spaces", action="store_true", default=env_flag(UNSAFE_ENV),
                   help="where no Space sandbox can be built (no bubblewrap), run Space apps UNSANDBOXED, as the "
                   "server's user with its files in reach: for a single-user machine only. Without it such a host "
                   f"refuses to start Spaces (BUILD_ERROR saying why). Also ${UNSAFE_ENV}=1.")
    p.add_argument("--allow-private-webhooks", action="store_true", default=env_flag(PRIVATE_WEBHOOKS_ENV),
                   help="let webhooks target loopback, private, link-local and other non-public addresses (refused "
                   f"by default: a webhook would otherwise be a way into the server's network). Also "
                   f"${PRIVATE_WEBHOOKS_ENV}=1.")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> None:
    try:
        specs = [s for path in args.token_file for s in read_token_file(path)]
    except ValueError as err:
        raise SystemExit(f"localhub: {err}") from None
    from_env = [s for s in os.environ.get(TOKENS_ENV, "").split(",") if s]
    if from_env:
        print(f"localhub: tokens in ${TOKENS_ENV} can be read through /proc/<pid>/environ; prefer --token-file",
              file=sys.stderr)
    specs += list(args.token) + from_env
    orgs = list(args.org) + [s for s in os.environ.get(ORGS_ENV, "").split(";") if s]
    try:  # everything the user gave is checked, and the port bound, before anything is created
        users, org_roles = parse_tokens(specs), parse_orgs(orgs)
        for spec in args.seed:
            parse_seed(spec)
        sock = socket.socket(fileno=args.fd) if args.fd is not None else listen(args.host, args.port)
    except ValueError as err:
        raise SystemExit(f"localhub: {err}") from None
    except OSError as err:
        raise SystemExit(f"localhub: cannot serve on {args.host}:{args.port}: {err.strerror or err}") from None
    serve(args.host, args.port, args.data, users, seed=args.seed, orgs=org_roles, unsafe_spaces=args.unsafe_spaces,
          allow_private_webhooks=args.allow_private_webhooks, sock=sock)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="localhub", description="A Hugging Face Hub-compatible server")
    sub = parser.add_subparsers(required=True)
    add_serve_parser(sub)
    args = parser.parse_args(argv)
    args.func(args)
