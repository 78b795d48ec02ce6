"""`hubflow serve MODEL`: resolve a run, a Hub repo or a folder to a model and its kind, then become the server.

    hubflow serve ./model-folder --public
    hubflow serve alice/ticket-router@3f2a… --token-file ~/.config/serve-token --port 8000
    hubflow serve ./.hubflow/store/runs/<id>/summary.json --precision int8

-> `python hubflow/serving/server.py --model … --task … --handler hubflow/kinds/<kind>/serve.py [options]` in this
process's place (exec: SIGTERM reaches the server itself, which drains). The model's facts decide the kind: a run's
checkpoint facts, else the folder's hubflow.json, else the kinds' reading of a foreign model (stages/facts.py).
Every server option (docs/serving.md) is accepted and passed on; none carries a secret (tokens come from files or
the environment).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

from . import SERVER_FILE, handler_path
from .server import CHOICES, OPTIONS

OWN = {"model", "task", "revision", "handler"}  # set from the target, not passed through as given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`hubflow serve`'s arguments: the target, then every server option (default: the server's own)."""
    parser.add_argument("target", metavar="MODEL",
                        help="a local model folder, a Hub repo ns/name[@revision], or a run's summary.json")
    parser.add_argument("--revision", help="branch, tag or sha of a Hub repo (default main, pinned to its sha)")
    parser.add_argument("--task", help="the model's kind when it has no hubflow.json (e.g. text-classification)")
    for name, kind, default, text in OPTIONS:
        if name.replace("-", "_") in OWN:
            continue
        if kind is bool:
            parser.add_argument("--" + name, action="store_true", default=None, help=text)
        else:
            said = f" (default {default})" if default is not None else ""
            parser.add_argument("--" + name, type=kind, default=None, choices=CHOICES.get(name.replace("-", "_")),
                                help=text + said)


def resolve(target: str, revision: str | None, task: str | None) -> tuple[str, str | None, str]:
    """MODEL -> (local folder or repo id, pinned sha or None, task)."""
    from ..stages.facts import read_facts

    if target.endswith(".json") or "://" in target:
        from ..doors import store
        from ..refs import PipelineResult

        ckpt = PipelineResult.model_validate(store.read_json(target)).checkpoint
        folder = store.get_dir(ckpt.uri, Path(tempfile.gettempdir(), "hubflow-serve", ckpt.fingerprint[:32]))
        return str(Path(folder).resolve()), None, task or ckpt.facts.task
    if Path(target).is_dir():
        return str(Path(target).resolve()), None, task or read_facts(target).task
    repo_id, _, at = target.partition("@")
    from huggingface_hub import snapshot_download

    from ..doors.hub import hf_token, pin

    sha = pin(repo_id, "model", revision or at or "main", "serve").sha
    # The server downloads the same snapshot again (a cache hit): here only to read the facts that pick the kind.
    folder = snapshot_download(repo_id, revision=sha, token=hf_token())
    return repo_id, sha, task or read_facts(folder).task


def command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """Parsed `hubflow serve` arguments -> the server's argv and environment."""
    model, sha, task = resolve(args.target, args.revision, args.task)
    argv = [sys.executable, str(SERVER_FILE), "--model", model, "--task", task, "--handler", str(handler_path(task))]
    argv += ["--revision", sha] if sha else []
    env = dict(os.environ)
    for name, kind, _default, _text in OPTIONS:
        dest = name.replace("-", "_")
        value = getattr(args, dest, None)
        if dest in OWN or value in (None, False):
            continue
        argv += ["--" + name] if kind is bool else ["--" + name, str(value)]
    if not (args.public or args.token_file or env.get("SERVE_TOKEN") or env.get("SERVE_TOKEN_FILE")):
        argv += ["--token-file", str(make_token_file())]
    if sha:
        from ..doors.hub import hf_token

        if token := hf_token():  # a private model: the server downloads with it (environment, never argv)
            env["HF_TOKEN"] = token
    return argv, env


def make_token_file() -> Path:
    """A bearer token for callers, kept (owner-only) in ~/.config/hubflow/serve-token; created on first use."""
    path = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config", "hubflow", "serve-token")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    print(f"callers send the bearer token in {path} (Authorization: Bearer …); --public serves without one",
          file=sys.stderr)
    return path


def serve(args: argparse.Namespace) -> None:
    """Become the server (exec): the same file an endpoint Space runs."""
    argv, env = command(args)
    sys.stdout.flush(), sys.stderr.flush()
    os.execve(argv[0], argv, env)
