"""Ports on loopback, bound before anyone is told about them.

Choosing a free port and binding it later is a race: between the two, any other process may take it (the LLM demo's
localhub port was taken during its ~20 s of seeding, and the server died with EADDRINUSE). So a server's port is a
socket bound and listening from the start (`listen`), handed to the server as it is; a Space's app, which binds its
port itself, gets a port held for it (`reserve`) until it has bound it.

    sock = listen("127.0.0.1")            # port 0: any free port; sock.getsockname()[1] is the one bound
    sock = listen("127.0.0.1", 8900, fallback=True)   # that port when free, else any (the demo keeps its port)
"""

from __future__ import annotations

import errno
import socket

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn; a burst of connects must not overflow it


def _socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    # As every server binds: a port whose last connections are in TIME_WAIT can be bound again at once.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def listen(host: str = "127.0.0.1", port: int = 0, fallback: bool = False, backlog: int = BACKLOG) -> socket.socket:
    """A listening socket on host:port (0: a free port the kernel picks). With `fallback`, a port in use gives a
    free one instead of EADDRINUSE. Connections made before the server runs wait in the backlog: none is refused."""
    sock = _socket(host)
    try:
        try:
            sock.bind((host, port))
        except OSError as err:
            if not (fallback and port and err.errno == errno.EADDRINUSE):
                raise
            sock.close()
            sock = _socket(host)
            sock.bind((host, 0))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def reserve(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Hold a free port for a program that binds it itself (a Space's app): bound with SO_REUSEADDR but not
    listening, the port is never handed to anyone else's bind(port 0) or connect, while an app that binds it with
    SO_REUSEADDR (uvicorn, gradio, http.server, aiohttp all do) may. Close it once the app listens. LocalHub holds
    its port so across a stop and a start (`listen` on the held port works: it is not listening)."""
    sock = _socket(host)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago. Racy (see above): for tests that must name a port before anything can
    listen on it; servers use `listen`."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
