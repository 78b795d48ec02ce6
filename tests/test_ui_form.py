"""A person's view of the pipeline's run form: headless Chromium opens a real Prefect server's UI and picks a task kind.

The pipeline's parameter is a union of the installed kinds' configs keyed by `task` (hubflow.kinds.config_form), so
pydantic writes it as a JSON-schema `oneOf` with a `discriminator`. What Prefect 3.9.1's two UIs make of that:

* The V2 UI (`/v2/...`, React) renders `oneOf` as tabs, one per kind ("<task> pipeline", the config's title), each
  with that kind's typed form: these tests pick each kind and read its own fields by their descriptions.
* The V1 UI (`/`, the default) has no `oneOf` support (its schema mapper keeps `anyOf`/`allOf` only): `config` is
  a bare JSON editor there, and its own check passes anything (the schema it sends to /ui/schemas/validate has lost
  the union). The server still checks the run against the union: a config with another kind's keys is refused
  (409, "Validation failed for field 'config'"), a kind's own config starts a run; the test checks both.

Known V2 quirks (Prefect 3.9.1), seen in Chromium:
* A mouse click on a kind's tab does not switch it (the first kind's form stays); focusing the tab (Tab, arrow
  keys) does, so the tests pick a kind by focus, as a keyboard user does.
* Only the first kind's tab (causal-lm: the kinds are listed by name) submits a valid config: after switching, the
  submitted config still carries the first kind's section defaults (data.shape, train.lora, inference.generation,
  the sections' `task: causal-lm`), which the other kinds' sections forbid, so the server refuses it however it is
  filled in. That test is an xfail per kind; an XPASS says Prefect fixed it.
* The tab shown first is picked by key overlap, not by `task`: every kind's config has the same top-level keys, so a
  deployment whose default is a classifier config opens on the causal-lm tab, its values in that form. The
  deployment here has no default, as a new run form.

Run: `.venv/bin/pytest tests/test_ui_form.py -q` (~1 min: the server's start is most of it). Needs Debian's Chromium
(`make browser`) and playwright; skipped without them. Screenshots go to $HUBFLOW_TEST_ARTIFACTS (default: tmp).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localhub import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
BIN = Path(sys.executable).parent
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no Chromium at {CHROMIUM} (make browser)")
playwright = pytest.importorskip("playwright.sync_api")


def _descriptions() -> dict[str, dict[str, str]]:
    """{task: {what: description}}: fields only that kind's form has, as the UI prints them under their labels."""
    from hubflow.kinds.causal_lm.settings import CausalLMInference, CausalLMTrain
    from hubflow.kinds.sentence_embedding.settings import EmbeddingData, EmbeddingTrain
    from hubflow.kinds.text_classification.settings import ClassifierData

    def about(model, name: str) -> str:
        return model.model_fields[name].description

    return {
        "text-classification": {"data.label_column": about(ClassifierData, "label_column")},
        "causal-lm": {"train.method": about(CausalLMTrain, "method"), "train.lora": about(CausalLMTrain, "lora"),
                      "inference.generation": about(CausalLMInference, "generation")},
        "sentence-embedding": {"data.anchor_column": about(EmbeddingData, "anchor_column"),
                               "train.loss": about(EmbeddingTrain, "loss")},
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(URL, API URL) of `prefect server start` with its UI, on a fresh SQLite database; stopped by its pid."""
    import httpx

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_API_URL=f"{url}/api",
               PREFECT_UI_API_URL=f"{url}/api", PREFECT_UI_URL=url, DO_NOT_TRACK="1")
    log = home / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"prefect server exited: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"prefect server not up after 120 s: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield url, f"{url}/api"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def deployment(server) -> str:
    """The id of a deployment of the pipeline flow on a process pool `cpu`, with no default config."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import pipeline

    with temporary_settings({PREFECT_API_URL: server[1]}):
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name="cpu", type="process"))
        return str(pipeline.to_deployment(name="ui-form", work_pool_name="cpu").apply())


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("HUBFLOW_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _flow_runs(api: str, deployment_id: str) -> dict[str, dict]:
    """{run id: parameters} of the deployment's flow runs."""
    import httpx

    body = {"deployments": {"id": {"any_": [deployment_id]}}, "limit": 200}
    return {run["id"]: run["parameters"] for run in httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()}


def _new_run(page, api: str, deployment_id: str, before: dict[str, dict], refusals: int = 0) -> dict:
    """The parameters of the one run the page's submit created since `before` (waits up to 30 s); fails at once,
    with the server's reason, when the page shows one more refusal than the `refusals` it showed before."""
    refused = page.get_by_text("Validation failed for field 'config'")
    deadline = time.monotonic() + 30
    while (new := {k: v for k, v in _flow_runs(api, deployment_id).items() if k not in before}) == {}:
        assert refused.count() <= refusals, f"the run was refused: {refused.last.inner_text()[-2000:]}"
        assert time.monotonic() < deadline, "no flow run was created"
        time.sleep(0.5)
    assert len(new) == 1, new
    return next(iter(new.values()))


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(url, wait_until="networkidle")
    return page


def _pick(page, task: str):
    """Select the kind's tab as a keyboard user does (focus it); see the module's note on mouse clicks."""
    tab = page.get_by_role("tab", name=f"{task} pipeline", exact=True)
    playwright.expect(tab).to_be_visible(timeout=TIMEOUT_MS)
    tab.focus()
    playwright.expect(tab).to_have_attribute("aria-selected", "true")


def _check_config(params: dict, task: str) -> None:
    """The run's config is a valid config of `task`'s kind (its own class, so its own keys)."""
    from hubflow.config import PipelineConfig
    from hubflow.kinds import kind_for

    config = PipelineConfig.model_validate(params["config"])
    assert type(config) is kind_for(task).settings and config.task == task


# ---- the V2 UI: one typed form per kind ---------------------------------------------------------------------------


def test_the_run_form_offers_one_typed_form_per_kind(server, deployment, browser, shots):
    from hubflow.kinds import tasks

    expect = playwright.expect
    fields = _descriptions()
    assert set(tasks()) == set(fields), "a kind was added or removed: say which fields only its form has"
    page = _open(browser, f"{server[0]}/v2/deployments/deployment/{deployment}/run")
    try:
        expect(page.get_by_text("config", exact=True)).to_be_visible(timeout=TIMEOUT_MS)
        kinds = page.get_by_role("tab", name=" pipeline")  # the kinds' tabs; Now/Later are tabs too
        expect(kinds).to_have_count(len(fields), timeout=TIMEOUT_MS)
        assert sorted(kinds.all_inner_texts()) == sorted(f"{task} pipeline" for task in fields)
        for task, own in fields.items():
            _pick(page, task)
            for what, description in own.items():  # the kind's own fields, under their labels
                expect(page.get_by_text(description, exact=True), f"{task}: {what}").to_be_visible()
            for other, theirs in fields.items():  # and no other kind's
                if other == task:
                    continue
                for what, description in theirs.items():
                    expect(page.get_by_text(description, exact=True), f"{task} shows {other}'s {what}"
                           ).to_have_count(0)
            # The shared sections are typed forms too (nested models, their fields' labels).
            expect(page.get_by_label("Learning Rate (Optional)")).to_be_visible()
            page.screenshot(path=str(shots / f"run-form-{task}.png"), full_page=True)
    finally:
        page.close()
    print(f"screenshots: {shots}/run-form-*.png")


def _fill_and_submit(page, learning_rate: str | None = None):
    page.get_by_label("Repo Id", exact=True).fill("acme/tiny-bert")  # the two required fields
    page.get_by_label("Source", exact=True).fill("acme/tickets")
    if learning_rate is not None:
        page.get_by_label("Learning Rate (Optional)").fill(learning_rate)
    page.get_by_role("button", name="Submit").click()


def test_the_form_refuses_a_bad_value_and_starts_nothing(server, deployment, browser, shots):
    expect = playwright.expect
    before = _flow_runs(server[1], deployment)
    page = _open(browser, f"{server[0]}/v2/deployments/deployment/{deployment}/run")
    try:
        _pick(page, "causal-lm")
        _fill_and_submit(page, learning_rate="-1")  # the bounds are (0, 1)
        expect(page.get_by_text("Validation failed for field 'config'").first).to_be_visible(timeout=TIMEOUT_MS)
        page.screenshot(path=str(shots / "run-form-refused.png"))
        assert _flow_runs(server[1], deployment) == before
    finally:
        page.close()


# The first kind's tab (causal-lm: kinds are listed by name) submits its own config. Another kind's tab submits a
# config that still carries the first kind's section defaults (data.shape, train.lora, inference.generation, the
# sections' task: causal-lm, ...), which its sections forbid: the server refuses it (409) however it is filled in.
FIRST_TAB_ONLY = pytest.mark.xfail(
    reason="Prefect 3.9.1 V2 UI: after switching the oneOf tab, the form keeps the first kind's nested defaults, "
    "so the submitted config mixes two kinds and is refused", strict=False)


@pytest.mark.parametrize("task", ["causal-lm", pytest.param("text-classification", marks=FIRST_TAB_ONLY),
                                  pytest.param("sentence-embedding", marks=FIRST_TAB_ONLY)])
def test_a_kinds_form_starts_a_run_with_that_kinds_config(server, deployment, browser, shots, task):
    before = _flow_runs(server[1], deployment)
    page = _open(browser, f"{server[0]}/v2/deployments/deployment/{deployment}/run")
    try:
        _pick(page, task)
        _fill_and_submit(page)
        try:
            params = _new_run(page, server[1], deployment, before)
        finally:
            page.screenshot(path=str(shots / f"run-form-submitted-{task}.png"))
    finally:
        page.close()
    _check_config(params, task)


# ---- the V1 UI (the default at /): a JSON editor, checked against the union ----------------------------------------


def test_the_default_ui_edits_the_config_as_json_checked_against_every_kind(server, deployment, browser, shots):
    import httpx

    from hubflow.kinds import all_kinds

    expect = playwright.expect
    schema = httpx.get(f"{server[1]}/deployments/{deployment}", timeout=10).json()["parameter_openapi_schema"]
    definitions = schema.get("definitions") or schema["$defs"]
    union = schema["properties"]["config"]
    assert union["discriminator"]["propertyName"] == "task"
    assert {definitions[ref["$ref"].rsplit("/", 1)[-1]]["title"] for ref in union["oneOf"]} == {
        kind.settings.model_config["title"] for kind in all_kinds()}  # one typed object per kind, as the UI gets it

    url = f"{server[0]}/deployments/deployment/{deployment}/run"
    mixed = {"task": "text-classification", "model": {"repo_id": "acme/tiny-bert"},
             "data": {"source": "acme/tickets"}, "train": {"method": "lora"}}  # train.method is causal-lm's
    good = {"task": "text-classification", "model": {"repo_id": "acme/tiny-bert"},
            "data": {"source": "acme/tickets", "label_column": "category"}}
    before = _flow_runs(server[1], deployment)
    page = _open(browser, url)
    try:
        editor = page.get_by_role("group").get_by_role("textbox")  # config's JSON editor (a textarea)
        expect(editor).to_be_visible(timeout=TIMEOUT_MS)
        editor.fill(json.dumps(mixed))
        page.get_by_role("button", name="Submit").click()
        expect(page.get_by_text("Validation failed for field 'config'").first).to_be_visible(timeout=TIMEOUT_MS)
        page.screenshot(path=str(shots / "run-form-v1-refused.png"))
        assert _flow_runs(server[1], deployment) == before
        editor.fill(json.dumps(good))
        refusals = page.get_by_text("Validation failed for field 'config'").count()  # the first one's, still shown
        page.get_by_role("button", name="Submit").click()
        params = _new_run(page, server[1], deployment, before, refusals)
    finally:
        page.close()
    _check_config(params, "text-classification")
    assert params["config"]["data"]["label_column"] == "category"
