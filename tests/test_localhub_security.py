"""localhub under attack, through real HTTP clients against a real LocalHub (docs/reliability.md, "## localhub").

Run: `.venv/bin/pytest tests/test_localhub_security.py -q` (~40 s on 2 busy cores). Cases:

* a hostile Space app, pushed by bob with his write token, tries every read that gave localhub away before: hub.db,
  secret.key, the token file, the blobs, the data dir, another Space's checkout, home and environment,
  /proc/<server pid>/environ and cmdline, every process it can see; reports through its HTTP endpoint all it read,
  and the test looks for every secret in it (users' tokens, the server's own HF_TOKEN and admin token, the key, the
  other Space's secret, a private LFS file). It must find nothing, run as uid 65534 without capabilities, and hold a
  read-only token that reaches only bob's namespace;
* where no sandbox can be built (no bwrap), Spaces refuse to start and say why; `unsafe_spaces` runs them anyway;
* LFS by repo: knowing a private file's sha256 gets bob neither an "already there" nor a commit nor a download;
* webhook targets on loopback/private addresses are refused (this hub does not allow them);
* 413 for oversized bodies and for a 10 MB regular file in a commit; malformed requests are 4xx with a message
  (a table), and a sweep of malformed bodies over every route gets no 5xx and no dropped connection.

Needs bubblewrap for the hostile-Space case (`make test` installs it); without it that case checks the refusal.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

from localhub import LocalHub
from localhub.admin import ADMIN_HEADER
from localhub.server import build_hub

USERS = {"alice": (f"hf_alice_{secrets.token_hex(12)}", "write"), "bob": (f"hf_bob_{secrets.token_hex(12)}", "write"),
         "reader": (f"hf_reader_{secrets.token_hex(12)}", "read")}
PARENT_TOKEN = f"hf_parent_{secrets.token_hex(12)}"  # the server's own HF_TOKEN: no app may see it
ADMIN_TOKEN = f"admin_{secrets.token_hex(12)}"  # $LOCALHUB_ADMIN_TOKEN in the server's environment
VICTIM_SECRET = f"victim-secret-{secrets.token_hex(12)}"
PRIVATE_BYTES = b"PRIVATE-WEIGHTS-" + secrets.token_bytes(4096)


def start_hub(data_dir: Path, **kwargs) -> LocalHub:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", PARENT_TOKEN)
        mp.setenv("LOCALHUB_ADMIN_TOKEN", ADMIN_TOKEN)
        mp.setenv("LOCALHUB_SPACE_START_TIMEOUT", "120")
        mp.delenv("LOCALHUB_UNSAFE_SPACES", raising=False)
        mp.delenv("LOCALHUB_ALLOW_PRIVATE_WEBHOOKS", raising=False)
        for key in [k for k in kwargs if k.isupper()]:
            mp.setenv(key, kwargs.pop(key))
        return LocalHub(data_dir, users=USERS, **kwargs).start()


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> LocalHub:
    h = start_hub(tmp_path_factory.mktemp("security") / "hub")  # no allow_private_webhooks, no unsafe_spaces
    yield h
    h.stop()


@pytest.fixture(scope="module")
def alice(hub) -> HfApi:
    return HfApi(endpoint=hub.url, token=hub.token("alice"))


@pytest.fixture(scope="module")
def bob(hub) -> HfApi:
    return HfApi(endpoint=hub.url, token=hub.token("bob"))


@pytest.fixture(scope="module")
def private_model(alice) -> dict:
    """alice's private model with an LFS file: its sha256 is what hubflow publishes as a weights fingerprint."""
    repo_id = f"alice/private-{uuid.uuid4().hex[:6]}"
    alice.create_repo(repo_id, private=True)
    alice.upload_file(path_or_fileobj=PRIVATE_BYTES, path_in_repo="model.safetensors", repo_id=repo_id)
    return {"repo_id": repo_id, "sha256": hashlib.sha256(PRIVATE_BYTES).hexdigest(), "size": len(PRIVATE_BYTES)}


def wait(api: HfApi, repo_id: str, timeout: float = 120):
    return api.wait_for_space(repo_id, timeout=timeout, poll_interval=0.1)


def host_pid(api: HfApi, repo_id: str) -> int:
    """The host pid of a running Space's sandbox (its build log says it)."""
    return int(re.findall(r"\(pid (\d+)\)", "".join(api.fetch_space_logs(repo_id, build=True)))[-1])


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


# ---- the hostile Space ---------------------------------------------------------------------------------------------
VICTIM_APP = textwrap.dedent('''
    import os
    from http.server import BaseHTTPRequestHandler, HTTPServer
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
            self.wfile.write(b"ok")
    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
''').encode()

# Tries each read, keeps whatever it got ("loot"), and serves {report, loot (base64)} on GET.
HOSTILE_APP = textwrap.dedent('''
    import base64, json, os, urllib.error, urllib.request
    from http.server import BaseHTTPRequestHandler, HTTPServer

    TARGETS = json.loads(os.environ["TARGETS"])
    report = {"reads": {}, "found": [], "http": {}}
    loot = [json.dumps(dict(os.environ)).encode()]

    def grab(label, path):
        try:
            if os.path.isdir(path):
                names = os.listdir(path)
                report["reads"][label] = "listed"
                loot.append(" ".join(names).encode())
                for name in names[:100]:
                    if os.path.isfile(os.path.join(path, name)):
                        grab(f"{label}/{name}", os.path.join(path, name))
                return
            with open(path, "rb") as f:
                data = f.read(1 << 16)
            report["reads"][label] = f"read {len(data)} bytes"
            loot.append(data)
        except FileNotFoundError:
            report["reads"][label] = "missing"
        except (PermissionError, IsADirectoryError):
            report["reads"][label] = "denied"
        except OSError as err:
            report["reads"][label] = f"error {err.errno}"

    for label, path in TARGETS.items():
        grab(label, path)
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    report["pids"] = pids
    for pid in pids:
        for what in ("environ", "cmdline"):
            grab(f"/proc/{pid}/{what}", f"/proc/{pid}/{what}")
    seen = 0
    for root, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys", "/dev", "/usr")
                   and "site-packages" not in d and not d.startswith("python3")]
        for name in files:
            seen += 1
            if name in ("hub.db", "secret.key", "tokens") or name.startswith("hub.db-"):
                report["found"].append(os.path.join(root, name))
                grab("found:" + os.path.join(root, name), os.path.join(root, name))
        if seen > 50000:
            break

    status = open("/proc/self/status").read()
    field = lambda key: status.split(key + ":")[1].split("\\n")[0].strip()
    try:
        os.setuid(0)
        became_root = True
    except PermissionError:
        became_root = False
    report["id"] = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "pid": os.getpid(),
                    "CapEff": field("CapEff"), "CapBnd": field("CapBnd"), "NoNewPrivs": field("NoNewPrivs"),
                    "became_root": became_root, "cwd": os.getcwd(), "root": sorted(os.listdir("/"))}
    report["env_keys"] = sorted(os.environ)

    def call(method, path, headers=None, body=None):
        req = urllib.request.Request(os.environ["HF_ENDPOINT"] + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return [r.status, r.read(2000).decode(errors="replace")]
        except urllib.error.HTTPError as err:
            return [err.code, err.read(2000).decode(errors="replace")]
    auth = {"authorization": "Bearer " + os.environ.get("HF_TOKEN", "")}
    report["http"]["whoami"] = call("GET", "/api/whoami-v2", auth)
    report["http"]["victim_model"] = call("GET", "/api/models/" + os.environ["VICTIM_MODEL"], auth)
    report["http"]["victim_file"] = call("GET", f"/{os.environ['VICTIM_MODEL']}/resolve/main/model.safetensors", auth)
    report["http"]["victim_space_secrets"] = call("GET", f"/api/spaces/{os.environ['VICTIM_SPACE']}/secrets", auth)
    report["http"]["create_repo"] = call("POST", "/api/repos/create", {**auth, "content-type": "application/json"},
                                         json.dumps({"name": "stolen"}).encode())
    report["http"]["faults"] = call("GET", "/_localhub/faults", {"X-Localhub-Admin": os.environ.get("HF_TOKEN", "")})

    body = json.dumps({"report": report, "loot": base64.b64encode(b"\\n".join(loot)[: 32 << 20]).decode()}).encode()
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
''').encode()


def test_a_hostile_space_reads_nothing_of_the_hub_nor_of_other_spaces(hub, alice, bob, private_model):
    # A victim: alice's private Space with a secret, running.
    victim = f"alice/victim-{uuid.uuid4().hex[:6]}"
    alice.create_repo(victim, repo_type="space", space_sdk="gradio", private=True,
                      space_secrets=[{"key": "VICTIM_SECRET", "value": VICTIM_SECRET}])
    alice.upload_file(path_or_fileobj=VICTIM_APP, path_in_repo="app.py", repo_id=victim, repo_type="space")
    runtime = wait(alice, victim)
    if runtime.raw.get("localhub", {}).get("sandbox") == "refused":  # no bwrap here: the refusal is the defence
        assert runtime.stage == "BUILD_ERROR" and "bubblewrap" in runtime.raw["errorMessage"]
        pytest.skip("no Space sandbox on this host: Spaces refuse to start (checked); the hostile app cannot run")
    assert runtime.stage == "RUNNING", runtime.raw
    victim_pid = host_pid(alice, victim)
    data = hub.data_dir
    victim_dir = data / "spaces" / victim
    blob = data / "blobs" / private_model["sha256"][:2] / private_model["sha256"]
    assert blob.is_file() and hub.token_file.is_file()
    project = Path(__file__).resolve().parents[1]
    targets = {  # host paths: what they are to the hub, and what the app must not reach
        "data dir": data, "hub.db": data / "hub.db", "hub.db-wal": data / "hub.db-wal",
        "secret.key": data / "secret.key", "token file": hub.token_file, "blobs": data / "blobs", "private blob": blob,
        "spaces": data / "spaces", "victim space dir": victim_dir, "victim home": victim_dir / "home",
        "victim app": next((victim_dir / "runs").glob("*/app")), "server log": hub.log_file,
        "server environ": f"/proc/{hub.pid}/environ", "server cmdline": f"/proc/{hub.pid}/cmdline",
        "server root": f"/proc/{hub.pid}/root{data}/secret.key", "victim environ": f"/proc/{victim_pid}/environ",
        "victim app environ": f"/proc/{descendants(victim_pid)[-1]}/environ", "init root": f"/proc/1/root{data}",
        "project tests": project / "tests", "project config": project / "pyproject.toml", "shadow": "/etc/shadow",
        "hf token": Path.home() / ".cache" / "huggingface" / "token",
    }
    targets = {k: str(v) for k, v in targets.items()}

    hostile = f"bob/hostile-{uuid.uuid4().hex[:6]}"
    bob.create_repo(hostile, repo_type="space", space_sdk="gradio",
                    space_variables=[{"key": "TARGETS", "value": json.dumps(targets)},
                                     {"key": "VICTIM_MODEL", "value": private_model["repo_id"]},
                                     {"key": "VICTIM_SPACE", "value": victim}])
    bob.upload_file(path_or_fileobj=HOSTILE_APP, path_in_repo="app.py", repo_id=hostile, repo_type="space")
    runtime = wait(bob, hostile)
    assert runtime.stage == "RUNNING", runtime.raw.get("errorMessage")
    assert runtime.raw["localhub"]["sandbox"] == "bwrap"
    got = httpx.get(bob.space_info(hostile).host, timeout=30).json()
    report, loot = got["report"], base64.b64decode(got["loot"])

    # Nothing secret anywhere in what it read.
    key = (data / "secret.key").read_bytes()
    needles = {**{f"token of {u}": t.encode() for u, (t, _) in USERS.items()}, "server HF_TOKEN": PARENT_TOKEN.encode(),
               "admin token": ADMIN_TOKEN.encode(), "secret.key": key, "secret.key (hex)": key.hex().encode(),
               "victim's secret": VICTIM_SECRET.encode(), "private LFS bytes": PRIVATE_BYTES[:64],
               "sqlite file": b"SQLite format 3"}
    leaked = [name for name, needle in needles.items() if needle in loot]
    assert not leaked, f"the hostile Space read: {leaked}"
    # Each target: absent from its world, or refused.
    reads = report["reads"]
    for label in targets:
        assert reads[label] in ("missing", "denied"), f"{label} ({targets[label]}): {reads[label]}"
    assert not report["found"], report["found"]
    # Its own processes only: a handful of pids, none of them the server's or the victim's.
    assert len(report["pids"]) <= 5 and str(hub.pid) not in report["pids"]
    ident = report["id"]
    assert (ident["uid"], ident["gid"], ident["groups"]) == (65534, 65534, [])
    assert int(ident["CapEff"], 16) == 0 and int(ident["CapBnd"], 16) == 0 and ident["NoNewPrivs"] == "1"
    assert not ident["became_root"] and ident["cwd"] == "/home/user/app"
    assert "LOCALHUB_ADMIN_TOKEN" not in report["env_keys"] and "LOCALHUB_TOKENS" not in report["env_keys"]
    # Its token: read-only, bob's namespace only.
    http = report["http"]
    assert http["whoami"][0] == 200 and json.loads(http["whoami"][1])["auth"]["accessToken"]["role"] == "read"
    assert http["victim_model"][0] == 404 and http["victim_file"][0] == 404
    assert http["victim_space_secrets"][0] in (403, 404) and http["create_repo"][0] == 403
    assert http["faults"][0] == 403
    # It did not disturb the victim.
    assert alice.get_space_runtime(victim).stage == "RUNNING"


def test_the_token_file_is_the_servers_alone(hub):
    """Tokens reach the server through a 0600 file, not its environment or command line; its key and db are 0600."""
    assert hub.token_file.stat().st_mode & 0o777 == 0o600
    assert hub.data_dir.stat().st_mode & 0o777 == 0o700
    for name in ("hub.db", "secret.key"):
        assert (hub.data_dir / name).stat().st_mode & 0o777 == 0o600, name
    environ = Path(f"/proc/{hub.pid}/environ").read_bytes()
    cmdline = Path(f"/proc/{hub.pid}/cmdline").read_bytes()
    for token, _ in USERS.values():
        assert token.encode() not in environ and token.encode() not in cmdline
    assert b"--token-file" in cmdline


def test_a_token_file_others_can_read_is_refused(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice:hf_s3cr3t_value:write\n")
    tokens.chmod(0o644)
    done = subprocess.run([sys.executable, "-m", "localhub", "serve", "--data", str(tmp_path / "hub"), "--token-file",
                           str(tokens), "--port", "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "chmod 600" in done.stderr and "hf_s3cr3t_value" not in done.stderr


def test_without_a_sandbox_spaces_refuse_unless_the_operator_opts_in(tmp_path):
    for unsafe in (False, True):
        h = start_hub(tmp_path / f"hub-{unsafe}", LOCALHUB_BWRAP=str(tmp_path / "no-bwrap"), unsafe_spaces=unsafe)
        try:
            api = HfApi(endpoint=h.url, token=h.token("alice"))
            repo_id = f"alice/s-{uuid.uuid4().hex[:6]}"
            api.create_repo(repo_id, repo_type="space", space_sdk="gradio")
            api.upload_file(path_or_fileobj=VICTIM_APP, path_in_repo="app.py", repo_id=repo_id, repo_type="space")
            runtime = wait(api, repo_id)
            build = "".join(api.fetch_space_logs(repo_id, build=True))
            if unsafe:
                assert runtime.stage == "RUNNING" and runtime.raw["localhub"]["sandbox"] == "unsafe"
                assert "WARNING: unsandboxed" in build
            else:
                assert runtime.stage == "BUILD_ERROR" and runtime.raw["localhub"]["sandbox"] == "refused"
                message = runtime.raw["errorMessage"]
                assert "bwrap (bubblewrap) is not installed" in message and "--unsafe-spaces" in message
                assert "Starting" not in build  # no app process was started
        finally:
            h.stop()


# ---- LFS by repo -----------------------------------------------------------------------------------------------------
def _batch(hub, token: str, repo_id: str, oid: str, size: int) -> dict:
    r = httpx.post(f"{hub.url}/{repo_id}.git/info/lfs/objects/batch", headers={"authorization": f"Bearer {token}"},
                   json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": size}],
                         "hash_algo": "sha256"})
    assert r.status_code == 200, r.text
    return r.json()["objects"][0]


def _commit(hub, token: str, repo_id: str, lines: list[dict]) -> httpx.Response:
    body = "\n".join(json.dumps(x) for x in [{"key": "header", "value": {"summary": "x"}}, *lines])
    return httpx.post(f"{hub.url}/api/models/{repo_id}/commit/main", content=body.encode(),
                      headers={"authorization": f"Bearer {token}", "content-type": "application/x-ndjson"})


def test_a_private_files_sha256_opens_nothing(hub, bob, private_model):
    oid, size = private_model["sha256"], private_model["size"]
    mine = f"bob/loot-{uuid.uuid4().hex[:6]}"
    bob.create_repo(mine)
    # The batch API does not say "already there": bob must upload the bytes (which he does not have).
    assert "upload" in _batch(hub, hub.token("bob"), mine, oid, size).get("actions", {})
    # A commit naming the object is refused, with the answer an absent object gets.
    r = _commit(hub, hub.token("bob"), mine, [{"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256",
                                                                           "oid": oid, "size": size}}])
    assert r.status_code == 422 and "never uploaded" in r.json()["error"]
    r = _commit(hub, hub.token("bob"), mine, [{"key": "lfsFile", "value": {"path": "w.safetensors", "oid": oid}}])
    assert r.status_code == 422  # a copy by oid alone, likewise
    assert "w.safetensors" not in bob.list_repo_files(mine)
    with pytest.raises(EntryNotFoundError):
        bob.hf_hub_download(mine, "w.safetensors", cache_dir=str(hub.data_dir.parent / "bob-cache"))
    r = httpx.get(f"{hub.url}/{mine}/resolve/main/w.safetensors",
                  headers={"authorization": f"Bearer {hub.token('bob')}"})
    assert r.status_code == 404 and PRIVATE_BYTES[:16] not in r.content


def test_bytes_you_hold_dedup_and_public_objects_copy(hub, alice, bob, private_model, tmp_path):
    """The other side: a user who has the bytes uploads them (stored once) and commits; an object of a repo the
    writer can read is "already there" and may be named without an upload."""
    mine = f"bob/own-{uuid.uuid4().hex[:6]}"
    bob.create_repo(mine)
    bob.upload_file(path_or_fileobj=PRIVATE_BYTES, path_in_repo="same.safetensors", repo_id=mine)
    path = bob.hf_hub_download(mine, "same.safetensors", cache_dir=str(tmp_path))
    assert Path(path).read_bytes() == PRIVATE_BYTES
    public = f"alice/public-{uuid.uuid4().hex[:6]}"
    alice.create_repo(public)
    shared = secrets.token_bytes(2048)
    alice.upload_file(path_or_fileobj=shared, path_in_repo="shared.bin", repo_id=public)
    oid = hashlib.sha256(shared).hexdigest()
    assert "actions" not in _batch(hub, hub.token("bob"), mine, oid, len(shared))
    r = _commit(hub, hub.token("bob"), mine, [{"key": "lfsFile", "value": {"path": "copy.bin", "oid": oid,
                                                                           "size": len(shared)}}])
    assert r.status_code == 200, r.text
    assert Path(bob.hf_hub_download(mine, "copy.bin", cache_dir=str(tmp_path))).read_bytes() == shared


# ---- webhooks --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hook", "http://localhost:8080/hook", "http://api.localhost/x", "http://[::1]/hook",
    "http://10.1.2.3/hook", "http://192.168.0.1/", "http://172.16.5.4/", "http://169.254.169.254/latest/meta-data",
    "http://100.64.0.1/", "http://0.0.0.0/", "http://2130706433/", "http://0x7f000001/", "http://[::ffff:127.0.0.1]/",
    "http://[fd00::1]/", "https://224.0.0.1/",
])
def test_webhook_targets_on_private_addresses_are_refused(alice, url):
    with pytest.raises(HfHubHTTPError) as err:
        alice.create_webhook(url=url, watched=[{"type": "user", "name": "alice"}])
    assert err.value.response.status_code == 400
    assert "--allow-private-webhooks" in err.value.response.json()["error"]


def test_a_public_webhook_target_is_taken_and_cannot_be_moved_to_a_private_one(alice):
    hook = alice.create_webhook(url="http://93.184.216.34/hook", watched=[{"type": "user", "name": "alice"}])
    try:
        with pytest.raises(HfHubHTTPError) as err:
            alice.update_webhook(hook.id, url="http://127.0.0.1:8000/hook", watched=[])
        assert err.value.response.status_code == 400
        assert alice.get_webhook(hook.id).url == "http://93.184.216.34/hook"
    finally:
        alice.delete_webhook(hook.id)


def test_delivery_checks_the_address_again(tmp_path):
    """A name may resolve elsewhere at delivery than at registration: the delivery checks, and pins, the address."""
    hub = build_hub(tmp_path / "hub", {})
    try:
        hooks = next(e for e in hub.extensions if type(e).__name__ == "Webhooks")
        from localhub.webhooks import _PrivateTarget

        for url in ("http://localhost:9/x", "http://127.0.0.1:9/x", "http://10.0.0.1/x"):
            with pytest.raises(_PrivateTarget):
                hooks._post(urlsplit(url), b"{}", {})
    finally:
        hub.close()


# ---- size limits and malformed requests ------------------------------------------------------------------------------
def test_oversized_bodies_are_413(hub, alice):
    repo_id = f"alice/big-{uuid.uuid4().hex[:6]}"
    alice.create_repo(repo_id)
    auth = {"authorization": f"Bearer {hub.token('alice')}"}
    # A 10 MB regular file in a commit: the Hub's rule, bigger files go through LFS. Nothing is committed.
    content = base64.b64encode(b"a" * (10 * 1024 * 1024)).decode()
    r = _commit(hub, hub.token("alice"), repo_id, [{"key": "file", "value": {"content": content, "path": "big.txt",
                                                                             "encoding": "base64"}}])
    assert r.status_code == 413 and "big.txt" in r.json()["error"] and "LFS" in r.json()["error"]
    assert "big.txt" not in alice.list_repo_files(repo_id)
    # Just under the limit is fine.
    content = base64.b64encode(b"a" * (10 * 1024 * 1024 - 1)).decode()
    r = _commit(hub, hub.token("alice"), repo_id, [{"key": "file", "value": {"content": content, "path": "ok.txt",
                                                                             "encoding": "base64"}}])
    assert r.status_code == 200, r.text
    # An API body over 16 MiB: announced (Content-Length) or streamed (chunked), the answer is a 413, not a reset.
    r = httpx.post(f"{hub.url}/api/repos/create", content=b"x" * (17 << 20), headers=auth, timeout=120)
    assert r.status_code == 413 and "too large" in r.json()["error"]
    r = httpx.post(f"{hub.url}/api/repos/create", content=(b"x" * (1 << 20) for _ in range(20)), headers=auth,
                   timeout=120)
    assert r.status_code == 413 and r.headers["x-error-message"]
    # An LFS PUT longer than its signed size.
    data = secrets.token_bytes(1000)
    obj = _batch(hub, hub.token("alice"), repo_id, hashlib.sha256(data).hexdigest(), len(data))
    r = httpx.put(obj["actions"]["upload"]["href"], content=data + b"more")
    assert r.status_code in (400, 413) and r.headers["x-error-message"]


def _raw(hub, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as s:
        s.sendall(payload)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


MALFORMED = [  # (method, path, body, headers, status, words of the message)
    ("POST", "/api/repos/create", b"{", {}, 400, "not valid JSON"),
    ("POST", "/api/repos/create", b"[1, 2]", {}, 400, "JSON object"),
    ("POST", "/api/repos/create", b"\xff\xfe{", {}, 400, "not valid JSON"),
    ("POST", "/api/repos/create", b"[" * 100_000, {}, 400, "nested too deeply"),
    ("POST", "/api/repos/create", b'{"name": 5}', {}, 400, "name must be a string"),
    ("POST", "/api/repos/create", b'{"name": "x", "type": "kernel"}', {}, 400, "Invalid repo name or type"),
    ("DELETE", "/api/repos/delete", b'{"name": ["x"]}', {}, 400, "name must be a string"),
    ("POST", "/api/repos/move", b'{"fromRepo": {}, "toRepo": "alice/y"}', {}, 400, "fromRepo must be a string"),
    ("POST", "/api/models/{repo}/commit/main", b"not json\n", {}, 400, "Malformed commit payload"),
    ("POST", "/api/models/{repo}/commit/main", b'{"key": "header", "value": []}\n', {}, 400, "must be an object"),
    ("POST", "/api/models/{repo}/commit/main", b'{"key": "deletedFile", "value": {"path": 5}}\n', {}, 400,
     "deletedFile wants a path"),
    ("POST", "/api/models/{repo}/commit/main", b'{"key": "lfsFile", "value": {"path": "a", "oid": "../secret.key"}}\n',
     {}, 400, "Invalid LFS oid"),
    ("POST", "/api/models/{repo}/commit/main", b'{"key": "file", "value": {"path": "../x", "content": ""}}\n', {},
     400, "Invalid path"),
    ("POST", "/api/models/{repo}/commit/main", b'{"key": "rename", "value": {}}\n', {}, 400, "Unsupported"),
    ("POST", "/api/models/{repo}/commit/main", b'{"key": "header", "value": {"summary": 5}}\n', {}, 400,
     "header.summary must be a string"),
    ("POST", "/api/models/{repo}/preupload/main", b'{"files": 5}', {}, 400, "files must be a list"),
    ("POST", "/api/models/{repo}/preupload/main", b'{"files": [5]}', {}, 400, "preupload wants files"),
    ("POST", "/{repo}.git/info/lfs/objects/batch", b'{"operation": "upload", "objects": "x"}', {}, 400,
     "objects must be a list"),
    ("POST", "/{repo}.git/info/lfs/objects/batch", b'{"operation": "download", "objects": []}', {}, 400,
     "uploads only"),
    ("PUT", f"/_localhub/lfs/alice/{'0' * 64}/1/9999999999/n/forged", b"x", {}, 403, "Invalid or expired upload URL"),
    ("POST", "/api/models/{repo}/paths-info/main", b"[1]", {"content-type": "application/json"}, 400, "JSON object"),
    ("POST", "/api/models/{repo}/paths-info/main", b'{"paths": [1]}', {"content-type": "application/json"}, 400,
     "list of strings"),
    ("POST", "/api/models/{repo}/branch/b1", b'{"startingPoint": "\\u0000\\r\\n"}', {}, 404, "Invalid rev id"),
    ("POST", "/api/models/{repo}/branch/b1", b'{"startingPoint": 5}', {}, 400, "startingPoint must be a string"),
    ("POST", "/api/models/{repo}/tag/main", b'{"tag": ["v1"]}', {}, 400, "Invalid reference name"),
    ("GET", "/api/models?limit=abc", None, {}, 400, "limit must be an integer"),
    ("PUT", "/api/models/{repo}/settings", b'{"gated": "sometimes"}', {}, 400, "gated is false"),
    ("POST", "/api/settings/webhooks", b'{"url": "http://[", "watched": [{"type": "user", "name": "alice"}]}', {}, 400,
     "Invalid webhook url"),
    ("POST", "/api/settings/webhooks", b'{"url": "http://93.184.216.34/", "watched": "alice"}', {}, 400,
     "Invalid watched"),
    ("POST", "/api/spaces/{space}/secrets", b'{"key": "A", "value": 5}', {}, 400, "A value (string) is required"),
    ("POST", "/api/spaces/{space}/secrets", b'{"key": "1A", "value": "v"}', {}, 400, "Invalid key"),
    ("POST", "/api/spaces/{space}/hardware", b'{"flavor": "cpu-basic", "sleepTimeSeconds": "x"}', {}, 400,
     "sleepTimeSeconds must be an integer"),
    ("POST", "/api/spaces/{space}/hardware", b'{"flavor": ["cpu-basic"]}', {}, 400, "Invalid hardware flavor"),
    ("POST", "/api/spaces/{space}/sleeptime", b'{"seconds": "soon"}', {}, 400, "sleeptime wants"),
    ("GET", "/api/whoami-v2", None, {"authorization": "Bearer"}, 401, "Invalid credentials"),
    ("GET", "/api/whoami-v2", None, {"authorization": "Basic YWxpY2U6eA=="}, 401, "Invalid credentials"),
    ("POST", "/_localhub/faults", b"{", {ADMIN_HEADER: ADMIN_TOKEN}, 400, "wants a JSON list"),
    ("POST", "/_localhub/faults", b'[{"kind": "500", "rate": "often"}]', {ADMIN_HEADER: ADMIN_TOKEN}, 400,
     "fault rule needs"),
]


@pytest.fixture(scope="module")
def targets(alice) -> dict:
    repo, space = f"alice/target-{uuid.uuid4().hex[:6]}", f"alice/target-space-{uuid.uuid4().hex[:6]}"
    alice.create_repo(repo)
    alice.create_repo(space, repo_type="space", space_sdk="static")
    return {"repo": repo, "space": space}


@pytest.mark.parametrize("method,path,body,headers,status,words", MALFORMED,
                         ids=[f"{m} {p.split('?')[0][-40:]} {(b or b'')[:30]!r}" for m, p, b, *_ in MALFORMED])
def test_malformed_requests_are_4xx_with_a_message(hub, targets, method, path, body, headers, status, words):
    url = hub.url + path.format(**targets)
    r = httpx.request(method, url, content=body,
                      headers={"authorization": f"Bearer {hub.token('alice')}", **headers})
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert words in message and r.headers["x-error-message"]


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET /api/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_malformed_http_is_a_400_not_a_silent_close(hub, raw):
    answer = _raw(hub, raw)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def test_a_hostile_host_header_is_no_500(hub, targets):
    for host in (b"[", b"a b", b"x" * 5000, b"\xff"):
        answer = _raw(hub, b"GET /api/models/" + targets["repo"].encode() + b" HTTP/1.1\r\nHost: " + host
                      + b"\r\nConnection: close\r\n\r\n")
        assert re.match(rb"HTTP/1.1 [234]\d\d ", answer), (host, answer[:300])


def test_no_route_answers_malformed_bodies_with_a_5xx_or_a_dropped_connection(hub, targets):
    """A sweep: every route of this hub, each method, five malformed bodies, as the owner and as nobody."""
    fill = {"ns": "alice", "name": targets["repo"].split("/")[1], "rev": "main", "path": "README.md", "wid": "0" * 24,
            "org": "alice", "user": "bob", "num": "1", "namegit": targets["repo"].split("/")[1] + ".git",
            "branch": "b2", "tag": "t2", "oid": "0" * 64, "size": "5", "expires": "1", "nonce": "n", "sig": "s"}
    h = build_hub(hub.data_dir.parent / "routes-only", {})
    try:
        routes = [(r.methods, r.segments) for r in h.router.routes]
    finally:
        h.close()
    fives = ("name", "type", "files", "objects", "url", "key", "value", "flavor", "tag", "paths", "members")
    nulls = ("name", "organization", "files", "objects", "watched", "deletions")
    bodies = [b"{", b"[1]", b"\xff", json.dumps(dict.fromkeys(fives, 5)).encode(),
              json.dumps(dict.fromkeys(nulls)).encode()]
    bad, sent = [], 0
    with httpx.Client(base_url=hub.url, timeout=30) as client:
        for methods, segments in routes:
            parts = []
            for seg in segments:
                name, _, allowed = seg.strip("{}*").partition(":")
                parts.append(allowed.split("|")[0] if allowed else fill.get(name, "x") if seg.startswith("{") else seg)
            path = "/" + "/".join(parts)
            if "/spaces/" in path:
                path = path.replace(targets["repo"], targets["space"])
            for method in methods:
                for body in bodies:
                    for auth in ({"authorization": f"Bearer {hub.token('alice')}", ADMIN_HEADER: ADMIN_TOKEN}, {}):
                        sent += 1
                        try:
                            r = client.request(method, path, content=body, headers=auth)
                            if r.status_code >= 500:
                                bad.append((method, path, body[:20], r.status_code))
                        except httpx.HTTPError as err:
                            bad.append((method, path, body[:20], type(err).__name__))
    assert sent > 500 and not bad, bad
