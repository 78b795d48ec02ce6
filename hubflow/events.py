"""The one door for hub events: `emit_hub_update` turns "repo X has a new sha" into one Prefect event, once.

Both the webhook receiver (`hubflow webhooks serve`) and the polling sensor (`flows/watch.py`) call it. The contract
that deployment triggers match (deployments/prefect.yaml):

    event     hub.{repo_type}.updated                       repo_type: dataset | model
    resource  prefect.resource.id   = hub.{repo_type}.{repo_id}
              prefect.resource.name = {repo_id}
              hub.repo.type         = {repo_type}
    payload   {repo, repo_type, revision (the new commit sha), ref, source: webhook | sensor}
    id        uuid5 of (repo_type, repo_id, sha): the same revision always makes the same event id

Dedup, so that one revision starts one run however often the Hub delivers it:
1. `SeenRevisions`, a record of the revisions already announced: an in-memory set in front of a SQLite table in the
   state dir. The claim is one `INSERT OR IGNORE` under a lock, so concurrent deliveries (threads) and processes
   sharing the dir (a restarted receiver, a sensor on the same host) agree on exactly one winner.
2. The deterministic event id. Prefect 3.9's trigger service skips an event id it has already processed (an
   in-memory TTL cache of 30 min, lost when the server restarts) and its event store ignores a repeated id; a second
   line of defence for emitters that don't share a state dir, not the only one.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Literal

from prefect.events import Event

HubRepoType = Literal["dataset", "model"]
Source = Literal["webhook", "sensor"]
STATE_DIR_ENV = "HUBFLOW_STATE_DIR"
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "hubflow:hub-update")


class EmitError(RuntimeError):
    """Prefect did not accept the event (events off, or no API reachable); the revision stays unclaimed."""


def state_dir(path: str | os.PathLike | None = None) -> Path:
    """Where hubflow keeps its small local state: `path`, else $HUBFLOW_STATE_DIR, else ~/.local/state/hubflow."""
    chosen = (path or os.environ.get(STATE_DIR_ENV)
              or Path(os.environ.get("XDG_STATE_HOME", "~/.local/state")) / "hubflow")
    return Path(chosen).expanduser()


def hub_event_id(repo_type: str, repo_id: str, sha: str) -> uuid.UUID:
    """The event id of `repo@sha`: deterministic, so every emitter of that revision sends the same one."""
    return uuid.uuid5(_ID_NAMESPACE, f"{repo_type}/{repo_id}@{sha}")


class SeenRevisions:
    """The revisions already announced: a set in memory, a SQLite table (`seen.sqlite3`) on disk."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.path = state_dir(directory) / "seen.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._memory: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        # One connection shared by the receiver's threads (serialised by the lock); autocommit, WAL, and a busy
        # timeout so another process holding the file briefly makes us wait rather than fail.
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, repo_type TEXT, repo_id TEXT, sha TEXT,"
            " source TEXT, at REAL)"
        )

    def claim(self, event_id: uuid.UUID, repo_type: str, repo_id: str, sha: str, source: str) -> bool:
        """True for the first caller of a revision (it must emit), False for every later one."""
        with self._lock:
            if event_id in self._memory:
                return False
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?, ?, ?)",
                (str(event_id), repo_type, repo_id, sha, source, time.time()),
            )
            self._memory.add(event_id)
            return cursor.rowcount == 1

    def release(self, event_id: uuid.UUID) -> None:
        """Forget a claim whose event never left, so the next delivery or poll tries again."""
        with self._lock:
            self._memory.discard(event_id)
            self._db.execute("DELETE FROM seen WHERE event_id = ?", (str(event_id),))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def emit_hub_update(
    repo_type: HubRepoType,
    repo_id: str,
    revision: str,
    ref: str = "refs/heads/main",
    source: Source = "webhook",
    seen: SeenRevisions | None = None,
) -> Event | None:
    """Emit `hub.{repo_type}.updated` for `repo_id@revision` unless it was announced before (then None).

    `seen` defaults to the record in `state_dir()`. At least once: the event is POSTed to the Prefect API and counts
    as announced only when the server answered 2xx; otherwise the claim is released and `EmitError` raised, so the
    receiver answers 503, the Hub retries, and a redelivery emits. (`emit_event` would only queue it in memory: an
    unreachable server then loses it after the sender said yes.) The server ignores a repeated event id."""
    if repo_type not in ("dataset", "model"):
        raise ValueError(f"repo_type must be 'dataset' or 'model', not {repo_type!r}")
    event_id = hub_event_id(repo_type, repo_id, revision)
    record = seen or SeenRevisions()
    try:
        if not record.claim(event_id, repo_type, repo_id, revision, source):
            return None
        event = Event(
            event=f"hub.{repo_type}.updated",
            resource={"prefect.resource.id": f"hub.{repo_type}.{repo_id}", "prefect.resource.name": repo_id,
                      "hub.repo.type": repo_type},
            payload={"repo": repo_id, "repo_type": repo_type, "revision": revision, "ref": ref, "source": source},
            id=event_id,
        )
        try:
            _send(event)
        except BaseException as err:
            record.release(event_id)
            if isinstance(err, EmitError):
                raise
            raise EmitError(f"Prefect did not accept hub.{repo_type}.updated for {repo_id}@{revision[:10]}: "
                            f"{type(err).__name__}: {err}; is PREFECT_API_URL set and the server reachable?") from None
        return event
    finally:
        if seen is None:
            record.close()


def _send(event: Event) -> None:
    """POST one event to the Prefect API; return only when the server took it (2xx)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        response = client.request("POST", "/events", json=[event.model_dump(mode="json")])
    if response.status_code >= 300:
        raise EmitError(f"the Prefect API answered {response.status_code} to {event.event}: {response.text[:200]}")
