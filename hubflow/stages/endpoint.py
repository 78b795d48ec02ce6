"""Deploy a published model's HTTP API (the server `hubflow serve` runs) as an API Space; roll it back when it fails.

PublishedRepo (model at a sha) + its facts + EndpointConfig -> SpaceDeployment whose `url` is the API's base URL
(`InferenceClient(base_url=url, token=...)`, `openai.OpenAI(base_url=url + "/v1", api_key=...)`).

The Space is a Docker Space (`sdk: docker`, `app_port`; a Dockerfile for huggingface.co) whose `app.py` is a byte copy
of hubflow/serving/server.py and `handler.py` the kind's serve.py: localhub runs its python app_file in its sandbox.
Side effects, in order, with the gradio Space's pieces (stages/space.py): create the Space; hardware and sleep time;
the variables the server reads (SERVE_MODEL and SERVE_REVISION = the published sha, the batching settings); the
callers' bearer token as the Space *secret* SERVE_TOKEN (from $HUBFLOW_ENDPOINT_TOKEN or the Prefect Secret block
named by $HUBFLOW_ENDPOINT_TOKEN_BLOCK, read at call time; never in a file, a variable or a log); a read token for a
private model as the demo Space gets one; one commit of the files; wait for RUNNING, then for /health ready; the
smoke test through the unmodified `huggingface_hub.InferenceClient`: a call without the token is refused, and each
reference text gets the batch answer (a classifier's label, a chat model's greedy answer, an embedding's direction).
A version that fails is rolled back to the files and variables of `hubflow-last-good`, as the demo Space is.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..config import EndpointConfig
from ..doors import hub
from ..kinds import kind_for
from ..refs import ModelFacts, PublishedRepo, SpaceDeployment
from ..secrets import secret
from ..software import installed, pin
from .space import MANIFEST, SpaceDeployError, already_serving, give_read_access, roll_out

TOKEN_ENV = "HUBFLOW_ENDPOINT_TOKEN"  # the bearer token callers send; hubflow's smoke test sends it too
TOKEN_BLOCK_ENV = "HUBFLOW_ENDPOINT_TOKEN_BLOCK"
SERVER_TOKEN = "SERVE_TOKEN"  # the Space secret the server checks callers against (docs/serving.md)
# The server's file, read as bytes (never imported: hubflow.serving's launcher uses the stages, not the reverse).
SERVER_FILE = Path(__file__).resolve().parents[1] / "serving" / "server.py"
APP_PORT = 7860  # huggingface.co routes a Docker Space's traffic to app_port; localhub gives the app $PORT
# What the server itself imports: it does not change an answer, so it is pinned to this install's versions; the
# libraries that compute the answers are pinned to the versions the run recorded (the kind's requirements).
SERVING_STACK = ("fastapi", "uvicorn", "prometheus-client", "sse-starlette", "huggingface_hub")
ERROR_STAGES = ("BUILD_ERROR", "RUNTIME_ERROR", "CONFIG_ERROR", "NO_APP_FILE")


def default_repo_id(model_repo_id: str, cfg: EndpointConfig) -> str:
    return cfg.repo_id or f"{model_repo_id}-api"


def caller_token() -> str | None:
    """The bearer token callers of the endpoint send: $HUBFLOW_ENDPOINT_TOKEN, else the Prefect Secret block named
    by $HUBFLOW_ENDPOINT_TOKEN_BLOCK; read at call time, never a parameter."""
    return secret((TOKEN_ENV,), TOKEN_BLOCK_ENV)


def require_caller_token() -> str:
    token = caller_token()
    if not token:
        raise SpaceDeployError(f"endpoint.enabled: the endpoint needs the bearer token its callers will send: set "
                               f"{TOKEN_ENV} (or {TOKEN_BLOCK_ENV} to a Prefect Secret block's name)")
    return token


def server_variables(model: PublishedRepo, facts: ModelFacts, cfg: EndpointConfig, precision: str) -> dict[str, str]:
    """The Space variables the server reads (SERVE_*): the model at its published sha, its kind, the batching."""
    return {"SERVE_MODEL": model.repo_id, "SERVE_REVISION": model.sha, "SERVE_TASK": facts.task,
            "SERVE_PRECISION": precision, "SERVE_ON_TOO_LONG": cfg.on_too_long.value,
            "SERVE_MAX_BATCH_TOKENS": str(cfg.max_batch_tokens), "SERVE_MAX_BATCH_SIZE": str(cfg.max_batch_size),
            "SERVE_MAX_WAIT_MS": str(cfg.max_wait_ms), "SERVE_MAX_QUEUE": str(cfg.max_queue)}


def api_files(model: PublishedRepo, space_id: str, facts: ModelFacts, variables: dict[str, str],
              software: dict[str, str]) -> dict[str, bytes]:
    """The API Space's files: the server and the kind's handler (byte copies), requirements pinned (the answers'
    libraries to `software`, the run's record), a Dockerfile for huggingface.co, the README, the deployment record."""
    kind = kind_for(facts.task)
    handler = getattr(kind, "serve_handler", None)
    if handler is None:
        raise SpaceDeployError(f"endpoint: a {facts.task} model cannot be served (its kind has no serve handler)")
    names = [line.split("#")[0].strip() for line in (kind.space_app / "requirements.txt").read_text().splitlines()]
    needs = list(dict.fromkeys([n for n in names if n] + list(SERVING_STACK)))
    versions = {**installed(SERVING_STACK), **software}
    name = model.repo_id.split("/")[-1]
    record = {"deployed_by": "hubflow", "endpoint": True, "model": model.repo_id, "revision": model.sha,
              "facts": facts.model_dump(mode="json"), "variables": variables, "software": software}
    return {
        "app.py": SERVER_FILE.read_bytes(),
        "handler.py": handler.read_bytes(),
        "requirements.txt": pin("\n".join(needs), versions).encode(),
        "Dockerfile": DOCKERFILE.format(python=f"{sys.version_info.major}.{sys.version_info.minor}",
                                        port=APP_PORT).encode(),
        "README.md": README.format(name=name, model_id=model.repo_id, model_url=model.url, sha=model.sha,
                                   revision=model.sha[:10], port=APP_PORT, space_id=space_id, title=kind.title,
                                   token_env=TOKEN_ENV, usage=USAGE.get(kind.pipeline_tag, "")).encode(),
        MANIFEST: (json.dumps(record, indent=2) + "\n").encode(),
    }


def deploy(model: PublishedRepo, cfg: EndpointConfig, facts: ModelFacts, expected: list[tuple[str, str | None]],
           software: dict[str, str], precision: str = "auto", answer_tokens: int = 64) -> SpaceDeployment:
    """Create or update the API Space, wait until it serves, smoke-test it; on failure roll back and raise.

    `expected`: (input, answer) pairs the endpoint must give (the run's batch predictions, or hubflow's own inference
    of the model's examples); `software`: the versions that made them; `precision`: what they were computed with;
    `answer_tokens`: the greedy answers' length (a chat model's)."""
    token, caller = hub.hf_token(), require_caller_token()
    space_id = default_repo_id(model.repo_id, cfg)
    variables = server_variables(model, facts, cfg, precision)
    files = api_files(model, space_id, facts, variables, software)
    serving = already_serving(space_id, files, cfg)
    if serving is not None and serving[2] and _accepts(serving[2], caller):  # unchanged, and the token still opens it
        return SpaceDeployment(space_id=space_id, sha=serving[0], stage=serving[1], url=serving[2], model=model)
    hub.ensure_repo(space_id, "space", cfg.private, space_sdk="docker")
    hub.set_space_hardware(space_id, cfg.hardware, cfg.sleep_time_seconds)
    hub.set_space_variables(space_id, variables)
    hub.set_space_secret(space_id, SERVER_TOKEN, caller, "the bearer token callers send (set by hubflow)")
    if hub.is_private(model.repo_id, "model"):
        give_read_access(space_id, model.repo_id.split("/")[0])
    sha, host = roll_out(
        space_id, files, f"Serve the API of {model.repo_id}@{model.sha[:10]}", cfg.timeout_seconds, (token, caller),
        lambda host: smoke_test(space_id, host, expected or [("hello", None)], facts, caller, cfg.timeout_seconds,
                                answer_tokens))  # without reference answers: any valid answer
    return SpaceDeployment(space_id=space_id, sha=sha, stage="RUNNING", url=host, model=model)


def smoke_test(space_id: str, host: str, expected: list[tuple[str, str | None]], facts: ModelFacts, token: str,
               timeout: float, answer_tokens: int = 64) -> None:
    """The live API, through the unmodified InferenceClient: ready on /health, refuses a caller without the token,
    and answers each text as batch inference did. Raises SpaceDeployError saying what differs."""
    from huggingface_hub import InferenceClient
    from huggingface_hub.utils import get_session

    host = _wait_ready(space_id, host, timeout)
    client = InferenceClient(base_url=host, token=token, timeout=120)
    anonymous = get_session().get(f"{host}/info", timeout=30).status_code
    if anonymous != 401:
        raise SpaceDeployError(f"the API answered {anonymous} to a caller without the token (401 expected)")
    kind = kind_for(facts.task)
    try:
        answers = [(text, want, ask(client, kind.pipeline_tag, text, facts, answer_tokens)) for text, want in expected]
    except Exception as err:  # noqa: BLE001 - any client failure means the API does not serve
        raise SpaceDeployError(f"the API is ready but a call failed: {type(err).__name__}: {err}") from None
    wrong = [(t, w, got) for t, w, got in answers if not kind.answers_match(got, w, facts)]
    if wrong:
        text, want, got = wrong[0]
        raise SpaceDeployError(f"smoke test: the API says {got[:200]!r} for {text!r}, batch inference says "
                               f"{(want or '')[:200]!r} ({len(wrong)}/{len(answers)} texts differ)")


def ask(client, pipeline_tag: str, text: str, facts: ModelFacts, answer_tokens: int = 64) -> str:
    """One call of the protocol the model's task speaks, answered as the kind's reference answers are written
    (hubflow.kinds `reference_answers`): a label, a greedy answer, a vector as JSON."""
    if pipeline_tag == "text-classification":
        return client.text_classification(text)[0].label  # every label, highest score first
    if pipeline_tag == "text-generation":
        if getattr(facts, "chat", True):
            out = client.chat_completion([{"role": "user", "content": text}], max_tokens=answer_tokens,
                                         temperature=0)
            return out.choices[0].message.content
        from huggingface_hub.utils import get_session

        reply = get_session().post(f"{client.model}/v1/completions", timeout=120, headers=client.headers,
                                   json={"prompt": text, "max_tokens": answer_tokens, "temperature": 0})
        reply.raise_for_status()
        return reply.json()["choices"][0]["text"]
    vector = client.feature_extraction(text)
    return json.dumps([float(x) for x in vector.reshape(-1)])


def _wait_ready(space_id: str, host: str, timeout: float) -> str:
    """RUNNING means the port answers; the model may still be loading (503 on /health). Wait for 200 -> the host it
    answers on (a restart by the hub moves it), or for the Space to fail (the server exits when it cannot load the
    model)."""
    from huggingface_hub.utils import get_session

    deadline = time.monotonic() + timeout
    while True:
        try:
            if get_session().get(f"{host}/health", timeout=30).status_code == 200:
                return host
        except Exception:  # noqa: BLE001 - refused or reset (the HTTP client's own errors): starting, or failing
            pass
        runtime = hub.space_runtime(space_id)
        if runtime["stage"] in ERROR_STAGES:
            raise SpaceDeployError(f"{runtime['stage']}: {runtime['error'] or 'no error message'}")
        if time.monotonic() > deadline:
            raise SpaceDeployError(f"the API did not report ready on /health within {timeout:g} s "
                                   "(endpoint.timeout_seconds)")
        time.sleep(1)
        host = (hub.space_host(space_id) if runtime["stage"] == "RUNNING" else None) or host


def _accepts(host: str, token: str) -> bool:
    """Does the live API open to this token (the secret may have been rotated since it was deployed)?"""
    from huggingface_hub.utils import get_session

    try:
        return get_session().get(f"{host}/info", headers={"authorization": f"Bearer {token}"},
                                 timeout=30).status_code == 200
    except Exception:  # noqa: BLE001 - not reachable: deploy it
        return False


DOCKERFILE = """\
# huggingface.co builds this image; localhub runs app.py with its own Python (offline, sandboxed).
FROM python:{python}-slim
RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user PATH=/home/user/.local/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /home/user/app
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --user -r requirements.txt
COPY --chown=user app.py handler.py ./
EXPOSE {port}
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "{port}"]
"""

README = """\
---
title: {name} API
emoji: 🔌
colorFrom: indigo
colorTo: green
sdk: docker
app_port: {port}
app_file: app.py
pinned: false
models:
  - {model_id}
short_description: HTTP API of {name}
---

# {name} API

{title} with [{model_id}]({model_url}) at commit `{revision}`, served over HTTP by hubflow's server (`app.py`, the
same file `hubflow serve` runs) with its handler (`handler.py`): the Hugging Face and OpenAI protocols, dynamic
batching, `GET /health`, `GET /info`, `GET /metrics`. The model is pinned to `{sha}` (Space variables
`SERVE_MODEL`, `SERVE_REVISION`); every call needs the bearer token (the Space secret `SERVE_TOKEN`; the deployer
holds it in `${token_env}`).

```python
from huggingface_hub import InferenceClient

client = InferenceClient(base_url="https://<this Space's host>", token="<the endpoint token>")
{usage}
```
"""

USAGE = {
    "text-classification": 'client.text_classification("I loved it", top_k=2)',
    "text-generation": 'client.chat_completion([{"role": "user", "content": "Hello!"}], max_tokens=64)',
    "sentence-similarity": 'client.feature_extraction("How do I reset my password?")',
}
