"""A person's view of the pipeline's run form: headless Chromium opens a real Prefect server's UI, in both of its UIs.

The pipeline's parameter is a union of the installed kinds' configs keyed by `task` (hubflow.kinds.config_form), so
pydantic validates each kind's config as its own class. Prefect 3.9.1 cannot offer pydantic's `oneOf`+discriminator
schema as a form (the default V1 UI shows an untyped JSON editor; the V2 UI one tab per kind, of which only the
first submits a valid config), so the parameter's JSON schema is ONE flat typed object (hubflow.kinds.FlatForm):
`task` a select of the installed kinds, each section the union of the kinds' properties, a kind-only one marked with
its kind in its description ("(causal-lm) Rank of the adapter matrices.") and given no default (both UIs fill every
default into the config they submit, so a default would put that kind's key into every other kind's config).

These tests check, in the default V1 UI (`/`) and in the V2 UI (`/v2/...`):
* the form is typed: every kind's own fields (label_column, method, lora and its rank, generation, anchor_column,
  loss) under their marked descriptions, the shared sections' fields, `task` as a select; no per-kind tabs;
* a bad value is refused by the server (409, "Validation failed for field 'config...'") and starts nothing;
* each kind's config, picked with the Task select and filled in, starts a run whose config is that kind's class;
* a classifier config carrying causal-lm's `train.lora` passes the server's check (the flat form accepts any
  installed kind's keys) and the run fails at flow start, when Prefect validates the parameters with pydantic, with
  an error naming `train.lora`.

UI notes (Prefect 3.9.1, Chromium): in V1, a field's <label for=...> does not point at its input, so fields are
found by their label's text within the property's block; V1's select opens on ArrowDown (a click only focuses it).
Every section also has an optional `task` select (no default), so the config's own is the first "Task".

Run: `.venv/bin/pytest tests/test_ui_form.py -q` (~1.5 min: the server's start is most of it). Needs Debian's
Chromium (`make browser`) and playwright; skipped without them. Screenshots go to $HUBFLOW_TEST_ARTIFACTS (default:
tmp).
"""

from __future__ import annotations

import os
import re
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
UIS = ["v1", "v2"]
REFUSED = "Validation failed for field 'config"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no Chromium at {CHROMIUM} (make browser)")
playwright = pytest.importorskip("playwright.sync_api")


def _own_fields() -> dict[str, dict[str, str]]:
    """{task: {what: the start of its description in the form}}: fields only that kind's config has, each marked with
    the kind, as the UI prints them under their labels."""
    from hubflow.kinds.causal_lm.settings import CausalLMInference, CausalLMTrain, Lora
    from hubflow.kinds.sentence_embedding.settings import EmbeddingData, EmbeddingTrain
    from hubflow.kinds.text_classification.settings import ClassifierData

    def about(task: str, model, name: str) -> str:
        return f"({task}) {model.model_fields[name].description}"

    return {
        "text-classification": {"data.label_column": about("text-classification", ClassifierData, "label_column")},
        "causal-lm": {"train.method": about("causal-lm", CausalLMTrain, "method"),
                      "train.lora": about("causal-lm", CausalLMTrain, "lora"),
                      "train.lora.r": about("causal-lm", Lora, "r"),
                      "inference.generation": about("causal-lm", CausalLMInference, "generation")},
        "sentence-embedding": {"data.anchor_column": about("sentence-embedding", EmbeddingData, "anchor_column"),
                               "train.loss": about("sentence-embedding", EmbeddingTrain, "loss")},
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
    """The parameters of the one run the page's submit created since `before` (waits up to 90 s: a busy machine);
    fails at once, with the server's reason, when the page shows one more refusal than the `refusals` it showed
    before."""
    refused = page.get_by_text(REFUSED)
    deadline = time.monotonic() + 90
    while (new := {k: v for k, v in _flow_runs(api, deployment_id).items() if k not in before}) == {}:
        assert refused.count() <= refusals, f"the run was refused: {refused.last.inner_text()[-2000:]}"
        assert time.monotonic() < deadline, "no flow run was created"
        time.sleep(0.5)
    assert len(new) == 1, new
    return next(iter(new.values()))


def _open(browser, server, deployment_id: str, ui: str):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    prefix = "/v2" if ui == "v2" else ""
    page.goto(f"{server[0]}{prefix}/deployments/deployment/{deployment_id}/run", wait_until="networkidle")
    return page


# A V1 property's block: the innermost div whose class list has `schema-form-property` itself.
_V1_BLOCK = "xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' schema-form-property ')][1]"


def _field(page, ui: str, label: str):
    """The input of the field labelled exactly `label`."""
    if ui == "v2":
        return page.get_by_label(label, exact=True)
    name = page.locator(".schema-form-property__label").filter(has_text=re.compile(f"^{re.escape(label)}$"))
    return name.locator(_V1_BLOCK).locator("fieldset").first.locator("textarea, input").first


def _task_select(page, ui: str):
    """The config's `task` select (the first: every section has an optional one of its own)."""
    if ui == "v2":
        return page.locator("[aria-label='Select Task']").first
    name = page.locator(".schema-form-property__label").filter(has_text=re.compile("^Task$")).first
    return name.locator(_V1_BLOCK).locator(".p-select-button__control")


def _choose_task(page, ui: str, task: str):
    select = _task_select(page, ui)
    playwright.expect(select).to_be_visible(timeout=TIMEOUT_MS)
    if ui == "v2":
        select.click()
    else:
        select.press("ArrowDown")  # V1's select opens from the keyboard (a click only focuses it)
    page.get_by_role("option", name=task, exact=True).click()
    playwright.expect(select).to_have_text(task)


def _fill_and_submit(page, ui: str, **fields: str):
    values = {"Repo Id": "acme/tiny-bert", "Source": "acme/tickets", **fields}  # the two required fields first
    for label, value in values.items():
        _field(page, ui, label).fill(value)
    page.get_by_role("button", name="Submit").click()


def _check_config(params: dict, task: str):
    """The run's config is a valid config of `task`'s kind (its own class, so its own keys); returns it."""
    from hubflow.config import PipelineConfig
    from hubflow.kinds import kind_for

    config = PipelineConfig.model_validate(params["config"])
    assert type(config) is kind_for(task).settings and config.task == task
    return config


# ---- the form: one typed form in both UIs ---------------------------------------------------------------------------


@pytest.mark.parametrize("ui", UIS)
def test_the_run_form_is_one_typed_form_with_every_kinds_fields(server, deployment, browser, shots, ui):
    from hubflow.kinds import DEFAULT_TASK, tasks

    expect = playwright.expect
    fields = _own_fields()
    assert set(tasks()) == set(fields), "a kind was added or removed: say which fields only its form has"
    page = _open(browser, server, deployment, ui)
    try:
        expect(_task_select(page, ui)).to_have_text(DEFAULT_TASK, timeout=TIMEOUT_MS)  # `task` is a typed select
        assert page.get_by_role("tab", name=" pipeline").count() == 0  # no tab per kind
        for task, own in fields.items():  # every kind's own fields, marked with the kind, under their labels
            for what, description in own.items():
                expect(page.get_by_text(description).first, f"{ui}: {task}'s {what}").to_be_visible()
            first = page.get_by_text(next(iter(own.values()))).first
            first.scroll_into_view_if_needed()  # V1 scrolls inside its page: a shot per kind, at its fields
            page.screenshot(path=str(shots / f"run-form-{ui}-{task}-fields.png"))
        for label in ("Repo Id", "Source", "Learning Rate (Optional)", "Label Column (Optional)",
                      "Anchor Column (Optional)", "R (Optional)", "Max New Tokens (Optional)"):
            expect(_field(page, ui, label).first, f"{ui}: {label}").to_be_editable()  # typed inputs, nested ones too
        page.screenshot(path=str(shots / f"run-form-{ui}.png"), full_page=True)
    finally:
        page.close()
    print(f"screenshots: {shots}/run-form-{ui}*.png")


@pytest.mark.parametrize("ui", UIS)
def test_the_form_refuses_a_bad_value_and_starts_nothing(server, deployment, browser, shots, ui):
    expect = playwright.expect
    before = _flow_runs(server[1], deployment)
    page = _open(browser, server, deployment, ui)
    try:
        _fill_and_submit(page, ui, **{"Learning Rate (Optional)": "-1"})  # the bounds are (0, 1)
        expect(page.get_by_text(REFUSED).first).to_be_visible(timeout=TIMEOUT_MS)
        page.screenshot(path=str(shots / f"run-form-{ui}-refused.png"))
        assert _flow_runs(server[1], deployment) == before
    finally:
        page.close()


# What each kind's form fills in beyond the required fields: one of its own fields (a nested one for causal-lm).
OWN_VALUES = {
    "text-classification": ({"Label Column (Optional)": "category"}, lambda c: c.data.label_column == "category"),
    "causal-lm": ({"Prompt Column (Optional)": "question", "R (Optional)": "8"},
                  lambda c: (c.data.prompt_column, c.train.lora.r) == ("question", 8)),
    "sentence-embedding": ({"Anchor Column (Optional)": "query"}, lambda c: c.data.anchor_column == "query"),
}


@pytest.mark.parametrize("task", list(OWN_VALUES))
@pytest.mark.parametrize("ui", UIS)
def test_a_kinds_form_starts_a_run_with_that_kinds_config(server, deployment, browser, shots, ui, task):
    fill, landed = OWN_VALUES[task]
    before = _flow_runs(server[1], deployment)
    page = _open(browser, server, deployment, ui)
    try:
        _choose_task(page, ui, task)
        _fill_and_submit(page, ui, **fill)
        try:
            params = _new_run(page, server[1], deployment, before)
        finally:
            page.screenshot(path=str(shots / f"run-form-{ui}-submitted-{task}.png"))
    finally:
        page.close()
    assert landed(_check_config(params, task)), params


def test_another_kinds_key_passes_the_form_and_fails_the_run_at_flow_start_naming_it(server, deployment, browser):
    """The flat form accepts any installed kind's keys; the flow's own validation (pydantic, per kind) refuses
    causal-lm's `train.lora` in a classifier config when the run starts, and says which key."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import pipeline

    before = _flow_runs(server[1], deployment)
    page = _open(browser, server, deployment, "v1")
    try:
        _choose_task(page, "v1", "text-classification")
        _fill_and_submit(page, "v1", **{"R (Optional)": "8"})
        params = _new_run(page, server[1], deployment, before)
    finally:
        page.close()
    assert params["config"]["task"] == "text-classification" and params["config"]["train"]["lora"] == {"r": 8}
    (run_id,) = set(_flow_runs(server[1], deployment)) - set(before)
    with temporary_settings({PREFECT_API_URL: server[1]}):
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(run_id)
            state = run_flow(pipeline, flow_run=flow_run, return_type="state")  # what a worker's process does
            final = client.read_flow_run(run_id).state
    assert state.is_failed() and final.is_failed(), final
    assert "Validation of flow parameters failed" in final.message and "train.lora" in final.message, final.message
