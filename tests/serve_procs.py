"""Server processes for the serving tests: hubflow/serving/server.py (or `hubflow serve`) on a port bound first.

    proc = ServerProcess.script(model_dir, handler, "--token-file", token_file)   # python server.py ...
    proc = ServerProcess.cli("alice/model@sha", "--public")                       # hubflow serve ...
    ServerProcess.wait_all([proc, ...]); proc.url; proc.metrics(); proc.stop()   # stopped by pid

The listening socket is bound here (localhub.ports.listen) and handed over as --fd, so the port is known before the
server starts and no other process can take it meanwhile.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from localhub.ports import listen

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "hubflow" / "serving" / "server.py"
HUBFLOW = Path(sys.executable).with_name("hubflow")


class ServerProcess:
    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.sock = listen("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.log = tempfile.NamedTemporaryFile(prefix="serve-", suffix=".log", delete=False)
        full = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
        # Tiny models on shared cores: one intra-op thread each is faster than several fighting.
        full.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env or {}))
        self.proc = subprocess.Popen(argv + ["--fd", str(self.sock.fileno())], pass_fds=[self.sock.fileno()],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=full, cwd=ROOT)
        self.sock.close()  # the server holds its own copy

    @classmethod
    def script(cls, model: str | Path, handler: str | Path, *options: str, env=None) -> ServerProcess:
        return cls([sys.executable, str(SERVER), "--model", str(model), "--handler", str(handler), *options], env)

    @classmethod
    def cli(cls, target: str | Path, *options: str, env=None) -> ServerProcess:
        return cls([str(HUBFLOW), "serve", str(target), *options], env)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the server did not become ready in {timeout} s:\n{self.output()[-3000:]}")

    @staticmethod
    def wait_all(procs: list[ServerProcess], timeout: float = 180) -> None:
        for p in procs:
            p.wait_ready(timeout)

    def metrics(self) -> dict[str, float]:
        """/metrics as {'name{labels}': value} (samples only)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([^#\s]\S*) (\S+)$", text, re.M)}

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM, by pid: the server drains and exits
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        os.unlink(self.log.name)
        return self.proc.returncode
