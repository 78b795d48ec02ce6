"""The sensor: poll watched Hub repos and announce each new commit as the same event the webhook receiver emits.

For Hubs that cannot reach you (no public ingress for `hubflow webhooks serve`). Deployed every 5 minutes from
deployments/prefect.yaml (`flows/watch.py:watch_hub`); by hand:

    python -c "from flows.watch import watch_hub, WatchedRepo; watch_hub([WatchedRepo(repo_id='me/reviews')])"

The last sha seen per repo and branch is a Prefect Variable (`hubflow-watch-<type>-<repo>-<hash>`), so it survives
workers that start fresh. The first poll of a repo records its sha as the baseline and emits nothing: deploying the
sensor must not retrain on every watched repo at once. A changed sha goes through `tasks.events.emit_hub_update`
(source "sensor"), whose dedup record and deterministic event id keep a revision that the receiver announced too
from starting a second run.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.variables import Variable
from pydantic import BaseModel, ConfigDict, Field

from tasks import events, hub


class WatchedRepo(BaseModel):
    """One Hub repo branch the sensor polls."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    repo_type: Literal["dataset", "model"] = Field("dataset", description="Kind of repo.")
    repo_id: str = Field(description="Hub repo id, e.g. 'stanfordnlp/imdb'.")
    branch: str = Field("main", description="Branch whose head is watched.")


@task(retries=3, retry_delay_seconds=[2, 5, 15])
def poll(repo: WatchedRepo) -> str | None:
    """Compare the branch head with the last seen sha; announce a change. Returns the emitted event id, if any."""
    sha = hub.pin(repo.repo_id, repo.repo_type, repo.branch, field=f"{repo.repo_type}:{repo.repo_id}").sha
    key = _variable_name(repo)
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


@flow(name="hubflow-watch")
def watch_hub(repos: list[WatchedRepo]) -> list[str]:
    """Poll each watched repo once; returns the ids of the `hub.<type>.updated` events emitted."""
    polled = poll.map(repos)
    return [event_id for event_id in polled.result() if event_id]


def _variable_name(repo: WatchedRepo) -> str:
    # Variable names allow [a-z0-9_-] only; the hash keeps 'A/b' and 'a/b', or 'a.b' and 'a-b', apart.
    slug = re.sub(r"[^a-z0-9]+", "-", f"{repo.repo_id}-{repo.branch}".lower()).strip("-")[:180]
    digest = hashlib.sha256(f"{repo.repo_type}/{repo.repo_id}@{repo.branch}".encode()).hexdigest()[:8]
    return f"hubflow-watch-{repo.repo_type}-{slug}-{digest}"
