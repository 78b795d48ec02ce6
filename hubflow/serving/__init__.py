"""Serving a model over HTTP (issue 19; docs/serving.md).

    SERVER_FILE                 hubflow/serving/server.py: the self-contained server (`hubflow serve` runs it; an
                                endpoint Space's app.py is a byte copy of it)
    handler_path(task) -> Path  the kind's handler file (hubflow/kinds/<kind>/serve.py; a Space's handler.py)
    server_command(...)         the argv that runs the server for a model folder or repo
"""

from __future__ import annotations

import sys
from pathlib import Path

SERVER_FILE = Path(__file__).with_name("server.py")


def handler_path(task: str) -> Path:
    """The serve handler of the kind that implements `task`; ValueError when that kind has none."""
    from ..kinds import kind_for

    path = getattr(kind_for(task), "serve_handler", None)
    if path is None:
        raise ValueError(f"task={task!r} has no serving handler")
    return Path(path)


def server_command(model: str, task: str, revision: str | None = None, extra: list[str] | None = None) -> list[str]:
    """argv of a server process for `model` (a folder or a Hub repo id) of kind `task`."""
    argv = [sys.executable, str(SERVER_FILE), "--model", model, "--task", task, "--handler", str(handler_path(task))]
    return argv + (["--revision", revision] if revision else []) + list(extra or [])
