"""Secrets at call time: from the environment, else from a Prefect Secret block named by another variable.

Never a parameter, never read at import time: a parameter lands in the run's record, logs and the UI.
"""

from __future__ import annotations

import os


def secret(env: tuple[str, ...], block_env: str) -> str | None:
    """The first of the `env` variables that is set, else the Prefect Secret block named by `$block_env`, else None."""
    for name in env:
        if value := os.environ.get(name):
            return value
    block = os.environ.get(block_env)
    if block:
        # The one place the plain library reaches into Prefect: the block store is where operators keep secrets.
        from prefect.blocks.system import Secret

        return Secret.load(block).get()
    return None
