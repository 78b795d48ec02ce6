"""The sensor's task: compare a watched branch's head with the last sha seen, and announce a change once."""

from __future__ import annotations

import hashlib
import re

from prefect import get_run_logger, task
from prefect.variables import Variable

from hubflow import events
from hubflow.config import WatchedRepo
from hubflow.doors import hub
from hubflow.tasks.common import NETWORK_RETRIES


@task(**NETWORK_RETRIES)
def poll(repo: WatchedRepo) -> str | None:
    """Compare the branch head with the last seen sha; announce a change. Returns the emitted event id, if any."""
    sha = hub.pin(repo.repo_id, repo.repo_type, repo.branch, field=f"{repo.repo_type}:{repo.repo_id}").sha
    key = variable_name(repo)
    last = Variable.get(key)
    if last == sha:
        return None
    event = None
    if last is not None:
        event = events.emit_hub_update(repo.repo_type, repo.repo_id, sha, f"refs/heads/{repo.branch}", "sensor")
    # Recorded after the emit: a crash in between re-announces on the next poll, and the dedup record drops it.
    Variable.set(key, sha, tags=["hubflow", "hubflow-watch"], overwrite=True)
    what = "baseline" if last is None else ("announced" if event else "already announced")
    get_run_logger().info("%s %s@%s: %s %s", repo.repo_type, repo.repo_id, repo.branch, what, sha[:10])
    return str(event.id) if event else None


def variable_name(repo: WatchedRepo) -> str:
    # Variable names allow [a-z0-9_-] only; the hash keeps 'A/b' and 'a/b', or 'a.b' and 'a-b', apart.
    slug = re.sub(r"[^a-z0-9]+", "-", f"{repo.repo_id}-{repo.branch}".lower()).strip("-")[:180]
    digest = hashlib.sha256(f"{repo.repo_type}/{repo.repo_id}@{repo.branch}".encode()).hexdigest()[:8]
    return f"hubflow-watch-{repo.repo_type}-{slug}-{digest}"
