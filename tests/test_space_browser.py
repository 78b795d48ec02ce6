"""A person's view of the demo Space: headless Chromium opens the app localhub runs, types, submits, reads the label.

Run: `.venv/bin/pytest tests/test_space_browser.py -q` (~25 s). Needs Debian's Chromium at /usr/bin/chromium
(`apt-get install -y chromium`; playwright's own browser download is not used: the machine is offline).
The screenshot goes to $HUBFLOW_TEST_ARTIFACTS (default: the test's tmp_path); its path is printed (`-rP` shows it).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from hubflow.config import SpaceConfig
from tests.test_space import LABELS, TIMEOUT, WIDGET, publish_tiny_model

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SENTENCE = "heavy rain and a storm over the city this evening"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")


@pytest.fixture
def running_space(localhub, tmp_path, monkeypatch):
    """(app URL, model folder) of a public demo Space deployed by hubflow for a freshly published tiny model."""
    from huggingface_hub import HfApi

    from hubflow.refs import ModelFacts
    from hubflow.software import installed
    from hubflow.stages.space import deploy
    from hubflow.tasks.release import pin_model

    monkeypatch.setenv("HF_TOKEN", localhub.token("alice"))
    repo_id = f"alice/tiny-browser-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "bert"
    publish_tiny_model(HfApi(endpoint=localhub.url, token=localhub.token("alice")), repo_id, folder)
    model = pin_model.fn(repo_id, "main")  # the plain function under the Prefect task
    facts = ModelFacts(task="text-classification", max_length=128, label_names=LABELS)
    deployment = deploy(model, SpaceConfig(enabled=True, timeout_seconds=TIMEOUT), facts, WIDGET, None, installed())
    return deployment.url, folder


def test_a_person_types_a_sentence_and_sees_the_batch_label(running_space, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    from hubflow.kinds.text_classification.model import predict_texts

    url, folder = running_space
    want = predict_texts(folder, [SENTENCE], max_length=128)[0]["label"]
    shot = Path(os.environ.get("HUBFLOW_TEST_ARTIFACTS") or tmp_path) / "space-browser.png"
    shot.parent.mkdir(parents=True, exist_ok=True)

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            page.goto(url, wait_until="networkidle")
            playwright.expect(page.get_by_text("Text classification with")).to_be_visible(timeout=30_000)
            page.get_by_label("Text").fill(SENTENCE)
            page.get_by_role("button", name="Classify").click()
            result = page.get_by_test_id("label-output-value")
            playwright.expect(result).to_have_text(want, timeout=30_000)
            for name in LABELS:  # every class's confidence is listed under the prediction
                playwright.expect(page.get_by_text(name, exact=True).first).to_be_visible()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
