"""LFS throughput of localhub through the real client: `upload_file` then `hf_hub_download` of one big file.

    python -m bench.lfs                 # 200 MB, a subprocess localhub on a free port
    python -m bench.lfs --size-mb 50    # quicker

Prints MB/s each way (MB = 10^6 bytes) and the server's peak RSS, sampled from /proc/<pid>/status every 10 ms.
Targets: >= 100 MB/s each way, server RSS < 200 MB. Everything lives in a temp dir that is removed afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from localhub import LocalHub, free_port


class PeakRss:
    """Samples VmRSS of a pid in a thread; `.peak_mb` after `stop()`."""

    def __init__(self, pid: int, every: float = 0.01):
        self.pid, self.every, self.peak_kb = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except OSError:
                return
            self._stop.wait(self.every)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


def make_file(path: Path, size: int) -> str:
    """Write `size` pseudo-random bytes (incompressible, cheap to make) and return their sha256."""
    h, block = hashlib.sha256(), os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(0, size, len(block)):
            chunk = block[: size - i]
            chunk = i.to_bytes(8, "little") + chunk[8:]  # no two MiB alike
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200, help="file size in MB (10^6 bytes); default 200")
    args = parser.parse_args()
    size = args.size_mb * 1_000_000

    tmp = Path(tempfile.mkdtemp(prefix="bench-lfs-"))
    port = free_port()
    # The client reads its environment at import: set it before huggingface_hub is imported.
    os.environ.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
                      HF_HOME=str(tmp / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    os.environ.pop("HF_TOKEN", None)
    from huggingface_hub import HfApi, hf_hub_download

    hub = LocalHub(tmp / "hub", users={"bench": ("bench-token", "write")}, port=port).start()
    try:
        src = tmp / "big.bin"
        digest = make_file(src, size)
        api = HfApi(endpoint=hub.url, token="bench-token")
        api.create_repo("bench/lfs")
        rss = PeakRss(hub.pid)

        t0 = time.perf_counter()
        sha = api.upload_file(path_or_fileobj=src, path_in_repo="big.bin", repo_id="bench/lfs").oid
        up = time.perf_counter() - t0
        src.unlink()  # keep peak disk use at 2x the file, not 3x

        t0 = time.perf_counter()
        got = hf_hub_download("bench/lfs", "big.bin", revision=sha, cache_dir=tmp / "cache", token="bench-token")
        down = time.perf_counter() - t0
        peak = rss.stop()

        h = hashlib.sha256()
        with open(got, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        assert h.hexdigest() == digest, "downloaded bytes differ from the uploaded ones"
        mb = size / 1e6
        print(f"file      {mb:.0f} MB over LFS (upload_file -> hf_hub_download, fresh cache)")
        print(f"upload    {up:6.2f} s  {mb / up:7.1f} MB/s")
        print(f"download  {down:6.2f} s  {mb / down:7.1f} MB/s")
        print(f"server    peak RSS {peak:.0f} MB")
    finally:
        hub.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
