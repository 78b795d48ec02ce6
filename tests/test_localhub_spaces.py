"""localhub Spaces through the real `HfApi`: settings, apps that really run, stages, logs, restarts.

Run: `.venv/bin/pytest tests/test_localhub_spaces.py -q` (~15 s). Apps are tiny `http.server` programs (they start
in ~0.4 s); one test runs a real gradio app and calls it with `gradio_client` (skipped where gradio is missing).

Apps run in localhub's sandbox (localhub/sandbox.py), in their own PID namespace: the pid an app sees is not its
host pid. The tests find the host processes of a run from the build log's "(pid N)" (the sandbox's outer process)
and its descendants, and check those die.
"""

from __future__ import annotations

import re
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from localhub import LocalHub

USERS = {"alice": ("hf_alice_spaces_tok", "write"), "bob": ("hf_bob_spaces_tok", "write")}
PARENT_TOKEN = "hf_parent_token_must_not_reach_apps"

# Answers GET with the environment it got (and its pid), logs to stdout, reads its port from $PORT.
ENV_APP = textwrap.dedent('''
    import json, os
    from http.server import BaseHTTPRequestHandler, HTTPServer
    print("booting VERSION", flush=True)
    KEYS = ("GREETING", "API_KEY", "HF_TOKEN", "SPACE_ID", "HF_ENDPOINT", "GRADIO_SERVER_PORT", "PORT")
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"version": "VERSION", "pid": os.getpid(), **{k: os.environ.get(k) for k in KEYS}})
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
''')
CRASH_APP = 'print("loading the model", flush=True)\nraise SystemExit("boom: model weights missing")\n'
SILENT_APP = "import time\nprint('thinking', flush=True)\ntime.sleep(600)\n"


def env_app(version: str = "v1") -> bytes:
    return ENV_APP.replace("VERSION", version).encode()


def start_hub(tmp: Path, **env: str) -> LocalHub:
    """A localhub subprocess whose environment carries `env` plus an HF_TOKEN that must not reach the apps."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", PARENT_TOKEN)
        for k, v in env.items():
            mp.setenv(k, v)
        return LocalHub(tmp / f"hub-{uuid.uuid4().hex[:6]}", users=USERS).start()


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> LocalHub:
    h = start_hub(tmp_path_factory.mktemp("spaces"), LOCALHUB_SPACE_START_TIMEOUT="120")
    yield h
    h.stop()


@pytest.fixture(scope="module")
def api(hub: LocalHub) -> HfApi:
    return HfApi(endpoint=hub.url, token=hub.token("alice"))


def new_space(api: HfApi, sdk: str = "gradio", **kwargs) -> str:
    repo_id = f"alice/space-{uuid.uuid4().hex[:8]}"
    api.create_repo(repo_id, repo_type="space", space_sdk=sdk, **kwargs)
    return repo_id


def upload(api: HfApi, repo_id: str, content: bytes, path: str = "app.py") -> str:
    return api.upload_file(path_or_fileobj=content, path_in_repo=path, repo_id=repo_id, repo_type="space").oid


def wait(api: HfApi, repo_id: str, timeout: float = 30):
    return api.wait_for_space(repo_id, timeout=timeout, poll_interval=0.1)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_dead(pids: int | set[int], timeout: float = 10) -> bool:
    pids = {pids} if isinstance(pids, int) else pids
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def app_pids(api: HfApi, repo_id: str) -> set[int]:
    """The host pids of a Space's running app: the sandbox's outer process (the build log's "(pid N)") and every
    descendant (the app itself runs in a PID namespace, where its own pid means nothing out here)."""
    root = int(re.findall(r"\(pid (\d+)\)", "".join(api.fetch_space_logs(repo_id, build=True)))[-1])
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    assert len(found) >= 2 or not alive(root), "the app's process was not found under the sandbox's"
    return found


def test_settings_round_trip_and_secrets_stay_write_only(api: HfApi, hub: LocalHub):
    repo_id = new_space(
        api, space_secrets=[{"key": "API_KEY", "value": "s3cr3t-value", "description": "the key"}],
        space_variables=[{"key": "GREETING", "value": "hello"}], space_hardware="t4-small", space_sleep_time=3600,
    )
    runtime = api.get_space_runtime(repo_id)
    assert runtime.stage == "NO_APP_FILE"  # the initial commit holds only .gitattributes
    assert (runtime.requested_hardware, runtime.sleep_time) == ("t4-small", 3600)

    secrets = api.get_space_secrets(repo_id)
    assert set(secrets) == {"API_KEY"} and secrets["API_KEY"].description == "the key"
    raw = httpx.get(f"{hub.url}/api/spaces/{repo_id}/secrets", headers={"authorization": f"Bearer {api.token}"})
    assert "s3cr3t-value" not in raw.text and "value" not in raw.json()["API_KEY"]
    info = httpx.get(f"{hub.url}/api/spaces/{repo_id}", headers={"authorization": f"Bearer {api.token}"})
    assert "s3cr3t-value" not in info.text

    api.add_space_secret(repo_id, "OTHER", "x")
    api.delete_space_secret(repo_id, "API_KEY")
    assert set(api.get_space_secrets(repo_id)) == {"OTHER"}
    variables = api.add_space_variable(repo_id, "MODEL", "alice/m", description="which model")
    assert {k: v.value for k, v in variables.items()} == {"GREETING": "hello", "MODEL": "alice/m"}
    assert set(api.delete_space_variable(repo_id, "GREETING")) == {"MODEL"}

    runtime = api.request_space_hardware(repo_id, "a10g-small", sleep_time=600)
    assert (runtime.requested_hardware, runtime.sleep_time) == ("a10g-small", 600)
    api.request_space_hardware(repo_id, "cpu-basic")
    with pytest.warns(UserWarning):  # the client warns that cpu-basic sleep time is fixed; localhub stores it
        assert api.set_space_sleep_time(repo_id, 7200).sleep_time == 7200
    runtime = api.get_space_runtime(repo_id)
    assert (runtime.requested_hardware, runtime.sleep_time) == ("cpu-basic", 7200)
    with pytest.raises(HfHubHTTPError) as err:
        api.request_space_hardware(repo_id, "quantum-xl")
    assert err.value.response.status_code == 400


def test_settings_need_the_owner(api: HfApi, hub: LocalHub):
    repo_id = new_space(api, private=True, space_secrets=[{"key": "API_KEY", "value": "v"}])
    bob = HfApi(endpoint=hub.url, token=hub.token("bob"))
    with pytest.raises(RepositoryNotFoundError):
        bob.get_space_runtime(repo_id)  # private: invisible to others
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).get_space_runtime(repo_id)
    public_id = new_space(api)
    assert bob.get_space_runtime(public_id).stage == "NO_APP_FILE"  # a public runtime is readable
    for call in (lambda: bob.get_space_secrets(public_id), lambda: bob.add_space_secret(public_id, "K", "v"),
                 lambda: bob.pause_space(public_id)):
        with pytest.raises(HfHubHTTPError) as err:
            call()
        assert err.value.response.status_code == 403


def test_app_runs_with_variables_and_secrets_but_no_inherited_token(api: HfApi, hub: LocalHub):
    repo_id = new_space(api, space_secrets=[{"key": "API_KEY", "value": "s3cr3t"}],
                        space_variables=[{"key": "GREETING", "value": "hello"}])
    upload(api, repo_id, env_app())
    assert api.get_space_runtime(repo_id).stage in ("BUILDING", "APP_STARTING", "RUNNING")  # the commit did not wait
    runtime = wait(api, repo_id)
    assert runtime.stage == "RUNNING" and runtime.hardware == "cpu-basic"

    info = api.space_info(repo_id)
    assert info.runtime.stage == "RUNNING" and info.subdomain == repo_id.replace("/", "-")
    assert info.host.startswith("http://127.0.0.1:")
    seen = httpx.get(info.host).json()
    assert (seen["GREETING"], seen["API_KEY"], seen["SPACE_ID"]) == ("hello", "s3cr3t", repo_id)
    assert seen["HF_ENDPOINT"] == hub.url
    # The hub's own HF_TOKEN stays out. In its place (deliberate, least privilege): a read-only token localhub mints
    # for this run, scoped to the Space's namespace, revoked when the run ends.
    minted = seen["HF_TOKEN"]
    assert minted and minted != PARENT_TOKEN and minted.startswith("hf_space_")
    as_space = HfApi(endpoint=hub.url, token=minted)
    assert as_space.whoami()["auth"]["accessToken"]["role"] == "read"
    pids = app_pids(api, repo_id)
    assert seen["PORT"] == seen["GRADIO_SERVER_PORT"] == info.host.rsplit(":", 1)[1]

    started = time.monotonic()
    logs = "".join(api.fetch_space_logs(repo_id))  # no-follow on a live app: returns promptly, not after 5 s
    assert "booting v1" in logs and time.monotonic() - started < 4
    assert "Commit SHA" in "".join(api.fetch_space_logs(repo_id, build=True))

    # A secret change restarts the app with the new environment, as on the Hub.
    api.add_space_secret(repo_id, "API_KEY", "rotated")
    assert wait(api, repo_id).stage == "RUNNING"
    host = api.space_info(repo_id).host
    assert httpx.get(host).json()["API_KEY"] == "rotated"
    assert wait_dead(pids)
    with pytest.raises(HfHubHTTPError) as err:  # the first run's token died with it
        as_space.whoami()
    assert err.value.response.status_code == 401


def test_second_commit_replaces_the_running_app(api: HfApi):
    repo_id = new_space(api)
    upload(api, repo_id, env_app("v1"))
    assert wait(api, repo_id).stage == "RUNNING"
    first = app_pids(api, repo_id)

    upload(api, repo_id, env_app("v2"))
    assert wait(api, repo_id).stage == "RUNNING"
    second = httpx.get(api.space_info(repo_id).host).json()
    assert second["version"] == "v2" and not app_pids(api, repo_id) & first
    assert wait_dead(first)
    assert "booting v2" in "".join(api.fetch_space_logs(repo_id))


def test_crashing_app_is_a_runtime_error_with_its_output(api: HfApi):
    repo_id = new_space(api)
    upload(api, repo_id, CRASH_APP.encode())
    runtime = wait(api, repo_id)
    assert runtime.stage == "RUNTIME_ERROR"
    assert "boom: model weights missing" in runtime.raw["errorMessage"]
    assert "Exit code: 1" in runtime.raw["errorMessage"]
    started = time.monotonic()
    logs = list(api.fetch_space_logs(repo_id, follow=True))  # the run is over: even a follower returns
    assert time.monotonic() - started < 4
    assert "loading the model\n" in logs and any("boom" in line for line in logs)
    assert api.space_info(repo_id).host is None


def test_pause_and_restart(api: HfApi):
    repo_id = new_space(api)
    upload(api, repo_id, env_app())
    assert wait(api, repo_id).stage == "RUNNING"
    pid = app_pids(api, repo_id)

    assert api.pause_space(repo_id).stage == "PAUSED"
    assert wait_dead(pid)
    assert api.get_space_runtime(repo_id).stage == "PAUSED"
    upload(api, repo_id, env_app("v2"))  # a commit to a paused Space does not start it
    time.sleep(0.3)
    assert api.get_space_runtime(repo_id).stage == "PAUSED"

    assert api.restart_space(repo_id, factory_reboot=True).stage in ("BUILDING", "APP_STARTING", "RUNNING")
    assert wait(api, repo_id).stage == "RUNNING"
    assert httpx.get(api.space_info(repo_id).host).json()["version"] == "v2"


def test_deleting_a_space_stops_its_app_even_if_recreated_at_once(api: HfApi):
    repo_id = new_space(api)
    upload(api, repo_id, env_app())
    assert wait(api, repo_id).stage == "RUNNING"
    pid = app_pids(api, repo_id)
    api.delete_repo(repo_id, repo_type="space")
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio")
    assert wait_dead(pid)
    assert api.get_space_runtime(repo_id).stage == "NO_APP_FILE"


def test_no_app_file(api: HfApi):
    repo_id = new_space(api)
    api.upload_file(path_or_fileobj=b"---\nsdk: gradio\napp_file: main.py\n---\n# demo\n", path_in_repo="README.md",
                    repo_id=repo_id, repo_type="space")
    upload(api, repo_id, env_app(), path="app.py")  # app.py is there, but the card names main.py
    runtime = wait(api, repo_id)
    assert runtime.stage == "NO_APP_FILE" and "main.py" in runtime.raw["errorMessage"]


def test_static_space_is_served(api: HfApi):
    repo_id = new_space(api, sdk="static")
    upload(api, repo_id, b"<h1>static hello</h1>", path="index.html")
    assert wait(api, repo_id).stage == "RUNNING"
    assert "static hello" in httpx.get(api.space_info(repo_id).host + "/index.html").text


def test_app_that_never_answers_times_out(tmp_path: Path):
    hub = start_hub(tmp_path, LOCALHUB_SPACE_START_TIMEOUT="3")
    try:
        api = HfApi(endpoint=hub.url, token=hub.token("alice"))
        repo_id = new_space(api)
        upload(api, repo_id, SILENT_APP.encode())
        runtime = wait(api, repo_id)
        assert runtime.stage == "RUNTIME_ERROR" and "Launch timed out" in runtime.raw["errorMessage"]
        assert "thinking" in runtime.raw["errorMessage"]
    finally:
        hub.stop()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_apps_end_with_the_hub(tmp_path: Path, how: str):
    hub = start_hub(tmp_path)
    try:
        api = HfApi(endpoint=hub.url, token=hub.token("alice"))
        repo_id = new_space(api)
        upload(api, repo_id, env_app())
        assert wait(api, repo_id).stage == "RUNNING"
        pid = app_pids(api, repo_id)
        hub.kill() if how == "kill" else hub.stop()
        assert wait_dead(pid), f"the app outlived a hub {how}"
    finally:
        hub.stop()


def test_a_restarted_hub_resumes_its_spaces(tmp_path: Path):
    hub = start_hub(tmp_path)
    try:
        api = HfApi(endpoint=hub.url, token=hub.token("alice"))
        running, paused = new_space(api), new_space(api)
        for repo_id in (running, paused):
            upload(api, repo_id, env_app())
            assert wait(api, repo_id).stage == "RUNNING"
        api.pause_space(paused)
        hub.stop()
        hub.start()
        assert wait(api, running).stage == "RUNNING"
        assert httpx.get(api.space_info(running).host).json()["version"] == "v1"
        assert api.get_space_runtime(paused).stage == "PAUSED"
    finally:
        hub.stop()


GRADIO_APP = textwrap.dedent('''
    import os
    import gradio as gr

    def answer(text):
        return f"{os.environ['GREETING']}, {text[::-1]}"

    gr.Interface(fn=answer, inputs="text", outputs="text").launch()
''')


def test_gradio_app_runs_and_answers_through_gradio_client(api: HfApi):
    """~4 s on a warm page cache (gradio's import dominates); the app runs with the server's Python."""
    pytest.importorskip("gradio")
    Client = pytest.importorskip("gradio_client").Client

    repo_id = new_space(api, space_variables=[{"key": "GREETING", "value": "hi"}])
    upload(api, repo_id, GRADIO_APP.encode())
    runtime = wait(api, repo_id, timeout=150)
    assert runtime.stage == "RUNNING", runtime.raw.get("errorMessage")
    client = Client(api.space_info(repo_id).host, verbose=False)
    assert client.predict("abc", api_name="/answer")  # gradio 6 names endpoints after the function == "hi, cba"
