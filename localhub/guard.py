"""localhub against a hostile local client: time limits on reading a request, a cap on connections, quiet logs.

Anyone on the machine can connect to the port. Without these, ~20,000 half-open connections (connect, send nothing)
exhausted the server's open files; a commit declaring 1 GB with a 100-byte body held its connection and task
forever; and the log grew by a traceback per failed accept (58 MB in 15 s). What each part does:

* **request head deadline** (`$LOCALHUB_HEADER_TIMEOUT`, 10 s): a connection must deliver a complete request head
  within it, counted from the connect or from the end of the previous response; else it is closed. uvicorn's
  keep-alive timeout alone stops counting at the first byte, so a head sent a byte at a time was never cut.
* **body idle limit** (`$LOCALHUB_BODY_IDLE_TIMEOUT`, 30 s): while the client still owes body bytes and the server
  is ready to read them, a silence that long closes the connection; the app sees a disconnect. Time the server
  itself pauses reading (a busy route: flow control) never counts against the client.
* **connection cap** (`$LOCALHUB_MAX_CONNECTIONS`, default half the open-file limit, at most 8192): at the cap, a
  new connection evicts the oldest one that has not sent a request head yet, then the oldest idle keep-alive one;
  connections whose request is being served are never evicted. So a flood of half-open connections keeps cycling
  through while well-behaved clients, who send their head at once, always get a place. When every connection is
  busy with a request, the new one is answered 503 and closed.
* **open files**: the soft RLIMIT_NOFILE is raised to the hard limit at start (`raise_open_files`).
* **logs** (`RateLimit`): a message repeated more than 10 times a minute is dropped, and how many were dropped is
  said once; a client that disconnects mid-request is one line, not a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from collections import OrderedDict

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("localhub")
HEADER_TIMEOUT = float(os.environ.get("LOCALHUB_HEADER_TIMEOUT") or 10)
BODY_IDLE_TIMEOUT = float(os.environ.get("LOCALHUB_BODY_IDLE_TIMEOUT") or 30)
MAX_CONNECTIONS_ENV = "LOCALHUB_MAX_CONNECTIONS"
ACCEPT_BATCH = 16  # connections asyncio accepts per wake-up of the listening socket (localhub/server.py)
_BUSY_503 = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n"
             b"content-length: 40\r\n\r\nlocalhub: too many connections, retry.\r\n")


def raise_open_files() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (a server's connections are files); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def max_connections() -> int:
    if os.environ.get(MAX_CONNECTIONS_ENV):
        return max(2, int(os.environ[MAX_CONNECTIONS_ENV]))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # the rest: blobs, SQLite, Spaces' pipes, the log
    return max(64, min(8192, soft // 2))


class Places:
    """One server's connections that may be evicted, oldest first: `fresh` ones (no request head yet) before
    `kept` ones (idle between keep-alive requests)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.fresh: OrderedDict[GuardedH11Protocol, None] = OrderedDict()
        self.kept: OrderedDict[GuardedH11Protocol, None] = OrderedDict()
        self.shed = self.refused = 0
        self.said = 0.0

    def idle(self, proto: GuardedH11Protocol, served: bool) -> None:
        (self.kept if served else self.fresh)[proto] = None

    def busy(self, proto: GuardedH11Protocol) -> None:
        self.fresh.pop(proto, None)
        self.kept.pop(proto, None)

    def evict_for(self, proto: GuardedH11Protocol) -> bool:
        """Make room for `proto`; False when every other connection is serving a request."""
        for queue in (self.fresh, self.kept):
            while queue:
                victim, _ = queue.popitem(last=False)
                if victim is not proto and not victim.transport.is_closing():
                    victim.transport.abort()
                    self.shed += 1
                    self._say()
                    return True
        self.refused += 1
        self._say()
        return False

    def _say(self) -> None:
        now = time.monotonic()
        if now - self.said >= 10:
            self.said = now
            log.warning("connection cap (%d) reached: %d idle connections closed, %d refused so far", self.cap,
                        self.shed, self.refused)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the head deadline, the body idle limit and the connection cap above."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.places: Places = _places(self.server_state)
        self.seen_cycle = None
        self.served = False
        self.waiting_head = False
        self.last_read = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.places.cap and not self.places.evict_for(self):
            transport.write(_BUSY_503)
            transport.close()
            return
        self._waiting_for_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.places.busy(self)
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.served = True
        self._track()

    # ---- states -----------------------------------------------------------------------------------------------
    def _track(self) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle is not self.seen_cycle:  # a new request head arrived
            self.seen_cycle, self.waiting_head = self.cycle, False
            self.places.busy(self)
            self._cancel()
            if self.conn.their_state is h11.SEND_BODY:
                self._arm(1.0, self._check_body)
        elif self.cycle is not None and self.cycle.response_complete and self.conn.their_state is h11.IDLE \
                and not self.waiting_head:
            self._waiting_for_head()  # keep-alive: the next head has the same deadline

    def _waiting_for_head(self) -> None:
        self.waiting_head = True
        self.places.idle(self, self.served)
        self._arm(HEADER_TIMEOUT, self._head_late)

    def _head_late(self) -> None:
        self.timer = None
        if self.waiting_head:
            self.transport.abort()  # no (new) request head in time: slowloris, or a connection left open

    def _check_body(self) -> None:
        self.timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        now = self.loop.time()
        if self.flow.read_paused:
            self.last_read = now  # the server is not reading: not the client's silence
        elif now - self.last_read > BODY_IDLE_TIMEOUT:
            self.transport.abort()  # the app's receive() now says http.disconnect
            return
        self._arm(1.0, self._check_body)

    def _arm(self, delay: float, fn) -> None:
        self._cancel()
        self.timer = self.loop.call_later(delay, fn)

    def _cancel(self) -> None:
        if getattr(self, "timer", None) is not None:
            self.timer.cancel()
            self.timer = None


def _places(server_state) -> Places:
    places = getattr(server_state, "localhub_places", None)
    if places is None:
        places = server_state.localhub_places = Places(max_connections())
    return places


class RateLimit(logging.Filter):
    """Drop a message (same logger, same format string) past `burst` times per `window` seconds, and say how many
    were dropped when it next gets through. A client's disconnect is one line without its traceback."""

    QUIET = ("ClientDisconnect", "ConnectionResetError", "BrokenPipeError", "CancelledError")

    def __init__(self, burst: int = 10, window: float = 60.0):
        super().__init__()
        self.burst, self.window = burst, window
        self.seen: dict[tuple[str, str], list] = {}  # key -> [window start, count, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None and record.exc_info[0].__name__ in self.QUIET:
            record.msg, record.args = f"{record.getMessage()} (client went away: {record.exc_info[0].__name__})", ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"  # the client's doing, not a server error
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        entry = self.seen.get(key)
        if entry is None or now - entry[0] > self.window:
            dropped = entry[2] if entry else 0
            if len(self.seen) > 1000:
                self.seen.clear()
            self.seen[key] = [now, 1, 0]
            if dropped:
                record.msg, record.args = f"{record.getMessage()} ({dropped} more like it dropped)", ()
            return True
        entry[1] += 1
        if entry[1] <= self.burst:
            return True
        entry[2] += 1
        return False


def quiet_logs() -> None:
    """Every handler of the root logger gets the rate limit; uvicorn's and asyncio's records propagate to it."""
    limit = RateLimit()
    for handler in logging.getLogger().handlers:
        handler.addFilter(limit)
