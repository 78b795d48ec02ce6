"""The sensor: poll watched Hub repos and announce each new commit as the same event the webhook receiver emits.

For Hubs that cannot reach you (no public ingress for `hubflow webhooks serve`). Deployed every 5 minutes from
deployments/prefect.yaml (`flows/watch.py:watch_hub`); by hand:

    python -c "from hubflow.flows.watch import watch_hub; from hubflow.config import WatchedRepo; \\
               watch_hub([WatchedRepo(repo_id='me/reviews')])"

The last sha seen per repo and branch is a Prefect Variable (`hubflow-watch-<type>-<repo>-<hash>`), so it survives
workers that start fresh. The first poll of a repo records its sha as the baseline and emits nothing: deploying the
sensor must not retrain on every watched repo at once. A changed sha goes through `hubflow.events.emit_hub_update`
(source "sensor"), whose dedup record and deterministic event id keep a revision that the receiver announced too
from starting a second run.
"""

from __future__ import annotations

from prefect import flow

from hubflow.config import WatchedRepo
from hubflow.tasks.watch import poll


@flow(name="hubflow-watch")
def watch_hub(repos: list[WatchedRepo]) -> list[str]:
    """Poll each watched repo once; returns the ids of the `hub.<type>.updated` events emitted."""
    polled = poll.map(repos)
    return [event_id for event_id in polled.result() if event_id]
