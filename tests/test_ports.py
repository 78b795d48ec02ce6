"""Servers come up on their port while another process keeps grabbing ports: no port is chosen and bound later.

A grabber process binds loopback ports (port 0, as any program asking for a free port does) as fast as it can,
holding thousands and letting the oldest go: a port that is merely free for a moment is soon its. localhub (as a
subprocess and as a thread), a Space's app and the demo's Prefect server must still come up and answer.

Run: `.venv/bin/pytest tests/test_ports.py -q` (~30 s; the Prefect server's start is most of it).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi

from hubflow.ops.demo_servers import PrefectServer, same_port_as_last_time
from localhub import LocalHub

USERS = {"alice": ("hf_alice_ports_tok", "write")}
GRABBER = textwrap.dedent('''
    import collections, socket, sys, time
    held, end = collections.deque(), time.monotonic() + float(sys.argv[1])
    print("grabbing", flush=True)
    while time.monotonic() < end:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", 0))
        except OSError:
            s.close()
        else:
            held.append(s)
        if len(held) > 8000:
            held.popleft().close()
''')


@pytest.fixture
def grabber():
    """Another process that keeps taking loopback ports while the test runs (at most 90 s)."""
    proc = subprocess.Popen([sys.executable, "-c", GRABBER, "90"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "grabbing"
    time.sleep(0.5)  # let it hold its thousands
    yield proc
    proc.kill()
    proc.wait()


def test_localhub_subprocess_keeps_its_port_through_a_slow_start(tmp_path: Path, grabber):
    hub = LocalHub(tmp_path / "hub", users=USERS)  # the URL is known now (HF_ENDPOINT is set from it)...
    time.sleep(3)  # ...and the demo seeds for a while before the server starts
    hub.start()
    try:
        assert httpx.get(f"{hub.url}/api/whoami-v2",
                         headers={"authorization": "Bearer hf_alice_ports_tok"}).json()["name"] == "alice"
        hub.stop()
        hub.start()  # a restart binds the same port again
        assert httpx.get(f"{hub.url}/api/health").status_code == 200
    finally:
        hub.stop()


def test_localhub_thread_keeps_its_port(tmp_path: Path, grabber):
    hub = LocalHub(tmp_path / "hub", users=USERS)
    time.sleep(2)
    hub.start_thread()
    try:
        assert httpx.get(f"{hub.url}/api/health").status_code == 200
    finally:
        hub.stop()


def test_spaces_apps_get_their_ports(tmp_path: Path, grabber):
    hub = LocalHub(tmp_path / "hub", users=USERS).start()
    try:
        api = HfApi(endpoint=hub.url, token=hub.token("alice"))
        spaces = []
        for i in range(5):  # each app binds its port ~0.1 s after the port was chosen: 5 chances to lose one
            repo_id = f"alice/static-{uuid.uuid4().hex[:6]}"
            api.create_repo(repo_id, repo_type="space", space_sdk="static")
            api.upload_file(path_or_fileobj=f"<p>page {i}</p>".encode(), path_in_repo="index.html", repo_id=repo_id,
                            repo_type="space")
            spaces.append(repo_id)
        for i, repo_id in enumerate(spaces):
            runtime = api.wait_for_space(repo_id, timeout=60, poll_interval=0.1)
            assert runtime.stage == "RUNNING", runtime.raw.get("errorMessage")
            assert f"page {i}" in httpx.get(api.space_info(repo_id).host + "/index.html").text
    finally:
        hub.stop()


def test_the_demo_keeps_its_localhub_port_when_free(tmp_path: Path):
    first = same_port_as_last_time(tmp_path)
    port = first.getsockname()[1]
    first.close()
    again = same_port_as_last_time(tmp_path)  # an unchanged rerun: the same port, so the same published URLs
    assert again.getsockname()[1] == port
    with again:
        other = same_port_as_last_time(tmp_path)  # taken (here by the first demo still running): another one
        with other:
            assert other.getsockname()[1] != port
            assert (tmp_path / "hub.port").read_text().strip() == str(other.getsockname()[1])


def test_the_demos_prefect_server_comes_up_while_ports_are_grabbed(tmp_path: Path, grabber, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    server = PrefectServer()  # its port is bound here and served by the child: the grabber cannot take it
    try:
        server.wait()
        assert httpx.get(f"{server.api_url}/health", timeout=10).status_code == 200
    finally:
        server.stop()


# socketserver.TCPServer binds without SO_REUSEADDR: a port held for it cannot be bound, so it is started again
# on a port that is only chosen (the old way) and still comes up.
PLAIN_BIND_APP = textwrap.dedent('''
    import http.server, os, socketserver
    class Server(socketserver.TCPServer):
        allow_reuse_address = False
    Server(("127.0.0.1", int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler).serve_forever()
''')


def test_an_app_that_binds_without_reuseaddr_still_runs(tmp_path: Path):
    hub = LocalHub(tmp_path / "hub", users=USERS).start()
    try:
        api = HfApi(endpoint=hub.url, token=hub.token("alice"))
        api.create_repo("alice/plain-bind", repo_type="space", space_sdk="gradio")
        api.upload_file(path_or_fileobj=PLAIN_BIND_APP.encode(), path_in_repo="app.py", repo_id="alice/plain-bind",
                        repo_type="space")
        runtime = api.wait_for_space("alice/plain-bind", timeout=60, poll_interval=0.1)
        assert runtime.stage == "RUNNING", runtime.raw.get("errorMessage")
        assert "app.py" in httpx.get(api.space_info("alice/plain-bind").host + "/").text  # its directory listing
        assert "starting it again on port" in "".join(api.fetch_space_logs("alice/plain-bind", build=True))
    finally:
        hub.stop()
