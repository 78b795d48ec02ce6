"""`python -m localhub serve` / `hubflow hub serve` as an operator runs them: from a venv under /tmp, on port 0, and
with arguments it must refuse before creating anything.

Run: `.venv/bin/pytest tests/test_localhub_serve.py -q` (~15 s).
"""

from __future__ import annotations

import os
import re
import site
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi

from localhub.ports import listen
from localhub.server import write_token_file

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_alice_serve_tok"
APP = textwrap.dedent('''
    import os
    from http.server import BaseHTTPRequestHandler, HTTPServer
    import space_helper  # lives in the venv's own site-packages: visible only if the venv is mounted
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = space_helper.GREETING.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
''')


def venv_under(tmp: Path) -> Path:
    """A venv in `tmp` (under /tmp, as a clone at /tmp/x/.venv would be) that sees this project's packages through
    a .pth file, plus one module of its own in its site-packages. Returns its python."""
    assert str(tmp).startswith("/tmp/"), f"the case is a venv under /tmp, got {tmp}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    own = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip())
    (own / "deps.pth").write_text("\n".join([*site.getsitepackages(), str(ROOT)]) + "\n")
    (own / "space_helper.py").write_text('GREETING = "hello from a venv under /tmp"\n')
    return python


def serve(python: Path | str, data: Path, *args: str) -> subprocess.Popen:
    tokens = write_token_file(data.parent / f"{data.name}.tokens", [f"alice:{TOKEN}:write"])
    return subprocess.Popen([str(python), "-m", "localhub", "serve", "--port", "0", "--data", str(data),
                             "--token-file", str(tokens), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def served_url(proc: subprocess.Popen, timeout: float = 60) -> str:
    """The URL from the log's `serving http://HOST:PORT` line: with --port 0 the server says which port it bound."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if m := re.search(r"serving (http://\S+)", line):
            return m.group(1)
    raise AssertionError("localhub never said where it serves:\n" + "".join(lines))


def test_spaces_run_when_the_servers_venv_is_under_tmp(tmp_path: Path):
    python = venv_under(tmp_path)
    proc = serve(python, tmp_path / "hub")
    try:
        url = served_url(proc)
        api = HfApi(endpoint=url, token=TOKEN)
        api.create_repo("alice/tmp-venv", repo_type="space", space_sdk="gradio")
        api.upload_file(path_or_fileobj=APP.encode(), path_in_repo="app.py", repo_id="alice/tmp-venv",
                        repo_type="space")
        runtime = api.wait_for_space("alice/tmp-venv", timeout=60, poll_interval=0.1)
        assert runtime.stage == "RUNNING", runtime.raw.get("errorMessage")
        assert runtime.raw["localhub"]["sandbox"] == "bwrap"  # sandboxed, not the --unsafe-spaces way out
        assert httpx.get(api.space_info("alice/tmp-venv").host).text == "hello from a venv under /tmp"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)


def test_a_sandbox_that_cannot_see_the_python_names_the_missing_path(tmp_path: Path):
    """A server whose venv was moved away under it (an upgrade replaced it): the refusal names the path the sandbox
    could not find, and does not send the operator to install bubblewrap, which is there."""
    python = venv_under(tmp_path)
    code = textwrap.dedent(f'''
        import os
        from pathlib import Path
        from localhub import sandbox
        os.rename({str(tmp_path / "venv")!r}, {str(tmp_path / "venv-moved")!r})
        box = sandbox.probe(Path({str(tmp_path / "data")!r}) / "spaces" / ".probe", unsafe=False)
        print(box.mode)
        print(box.reason)
    ''')
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    mode, reason = out.stdout.splitlines()[:2]
    assert mode == "refused", out.stdout + out.stderr
    assert f"{tmp_path}/venv/bin/python is missing there" in reason and "not visible inside the sandbox" in reason
    assert "Install bubblewrap" not in reason


@pytest.mark.parametrize("command", [[sys.executable, "-m", "localhub"],
                                     [str(Path(sys.executable).parent / "hubflow"), "hub"]],
                         ids=["localhub", "hubflow"])
def test_serve_seed_demo_refuses_in_one_line_and_leaves_nothing(tmp_path: Path, command: list[str]):
    data = tmp_path / "hub"
    done = subprocess.run([*command, "serve", "--seed", "demo", "--port", "0", "--data", str(data)],
                          capture_output=True, text=True, timeout=60)
    said = (done.stdout + done.stderr).strip()
    assert done.returncode != 0 and "Traceback" not in said and len(said.splitlines()) == 1, said
    assert "--seed 'demo'" in said and "TYPE:NAMESPACE/NAME=FOLDER" in said
    assert not data.exists()


def test_a_port_in_use_is_one_line_and_leaves_nothing(tmp_path: Path):
    with listen("127.0.0.1") as taken:
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "localhub", "serve", "--port", str(port), "--data",
                               str(tmp_path / "hub")], capture_output=True, text=True, timeout=60)
    said = (done.stdout + done.stderr).strip()
    assert done.returncode != 0 and len(said.splitlines()) == 1 and "Address already in use" in said, said
    assert not (tmp_path / "hub").exists()
