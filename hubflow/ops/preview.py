"""`hubflow space preview`: the Space's own app (the task kind's space_app/app.py) on this machine, for a person to try.

    hubflow space preview alice/my-model [--revision v1] [--port 7860]   # a model repo on $HF_ENDPOINT's Hub, pinned
    hubflow space preview ./.hubflow/store/runs/<id>/summary.json         # a pipeline run's checkpoint (or s3:// URI)

The app runs as its own process with the same variables a deployed Space gets, so the page is the Space's page.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PREVIEW_EXAMPLES = 5
TASK_ENV = "HUBFLOW_TASK"


def is_run(target: str) -> bool:
    """A run summary (a `summary.json` path or store URI) rather than a Hub repo id."""
    return target.endswith(".json") or "://" in target or Path(target).is_file()


def app_env(target: str, revision: str | None = None) -> dict[str, str]:
    """The variables the app needs for a run's checkpoint (a local folder) or a Hub model repo pinned to a sha; its
    tokens per input come from the model's facts, as batch inference and the deployed Space read them.
    `HUBFLOW_TASK` says which kind's app serves it."""
    if is_run(target):
        return _run_env(target)
    from ..doors.hub import endpoint, pin
    from ..refs import PublishedRepo
    from ..stages import space

    pinned = pin(target, "model", revision or "main", "model")
    model = PublishedRepo(repo_id=target, repo_type="model", sha=pinned.sha, url=f"{endpoint()}/{target}",
                          created=False)
    facts, examples = space.describe_model(model)
    return {**space.space_variables(model, examples, facts), TASK_ENV: facts.task}


def _run_env(summary_uri: str) -> dict[str, str]:
    from ..doors import store
    from ..refs import PipelineResult
    from ..stages.predict import read_predictions

    result = PipelineResult.model_validate(store.read_json(summary_uri))
    ckpt = result.checkpoint
    cache = Path(tempfile.gettempdir(), "hubflow-preview", ckpt.fingerprint[:32])
    folder = store.get_dir(ckpt.uri, cache)  # a local store answers with the folder itself, no copy
    texts = read_predictions(result.predictions).column("text").to_pylist()[:PREVIEW_EXAMPLES]
    return {"MODEL_ID": str(Path(folder).resolve()), "MAX_LENGTH": str(ckpt.facts.max_length),
            "EXAMPLES": json.dumps(texts), TASK_ENV: ckpt.facts.task}


def serve(env: dict[str, str], port: int | None = None, on_ready=print) -> int:
    """Run the app until it exits or Ctrl-C; calls `on_ready(message)` once it answers. Returns an exit code."""
    from ..doors.hub import hf_token
    from ..kinds import DEFAULT_TASK, kind_for

    # Ctrl-C stops the preview even when it was started with SIGINT ignored or blocked (a parent hands both on, and
    # Python then installs no KeyboardInterrupt handler).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # nor blocked: a blocked mask is inherited too
    held = _reserve(port or 0)  # the port is ours from here until the app listens on it: no other bind takes it
    port = held.getsockname()[1]
    full = {**os.environ, **env, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
            "GRADIO_ANALYTICS_ENABLED": "False"}
    token = hf_token()  # may come from a Prefect Secret block; the app reads HF_TOKEN, as on a Space
    if token and not os.path.isdir(env["MODEL_ID"]):
        full["HF_TOKEN"] = token
    url = f"http://127.0.0.1:{port}"
    with held, tempfile.TemporaryDirectory(prefix="hubflow-preview-") as cwd:  # gradio writes caches into its cwd
        proc = subprocess.Popen([sys.executable, str(kind_for(env.get(TASK_ENV, DEFAULT_TASK)).space_app / "app.py")],
                                cwd=cwd, env=full)
        try:
            while proc.poll() is None and not _answers(url):
                time.sleep(0.5)
            held.close()
            if proc.poll() is None:
                on_ready(f"Preview of {env['MODEL_ID']} at {url}  (Ctrl-C stops it)")
            return proc.wait()
        except KeyboardInterrupt:  # the terminal sent SIGINT to the app too; make sure it is gone
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # an app busy in its queue's worker threads: it is ours to stop
                proc.kill()
                proc.wait()
            return 130


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _reserve(port: int) -> socket.socket:
    """Hold 127.0.0.1:port (0: a free one) for the app, which binds it itself: bound with SO_REUSEADDR and not
    listening, the port is handed to no one else's bind or connect, while gradio's own bind (SO_REUSEADDR) succeeds.
    A port chosen and then bound later could be taken in between."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as err:
        sock.close()
        raise OSError(f"--port {port}: {err.strerror}") from None
    return sock
