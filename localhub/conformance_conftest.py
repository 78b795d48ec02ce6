"""The conftest.py of the conformance run: copied next to huggingface_hub's own tests (see localhub/conformance.py).

huggingface_hub's PyPI source archive ships its tests without their conftest.py, so this one supplies the fixtures
upstream's has (`api`, `api_prod`, `repo_factory`, `new_repo_id`, a temporary cache per test, the Xet and production
markers), pointed at the localhub in $HF_ENDPOINT, so any module of the suite runs. It also records, per test, whether
a Hub API request reached that localhub: only those tests count towards the conformance rate (the others are unit
tests of the client, or need huggingface.co). Telemetry pings (`HEAD /api/telemetry/...`, which gradio sends through
huggingface_hub at import) are not Hub API requests and do not count.
Not a module of localhub: it is never imported by it, only copied.
"""

from __future__ import annotations

import json
import os
from typing import Generator, Protocol
from urllib.parse import urlsplit

import httpx2
import pytest
from huggingface_hub import HfApi, RepoUrl, constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import SoftTemporaryDirectory

from .testing_constants import ENDPOINT_STAGING, TOKEN, USER
from .testing_utils import repo_name

_HUB = urlsplit(ENDPOINT_STAGING).netloc
_REPORT = os.environ.get("LOCALHUB_CONFORMANCE_REPORT")
# Production-marked classes that need no huggingface.co data: they create their own repos (as user "user" with
# token "hf_fake_token", which the runner's hub knows), so they run against the localhub too. Spaces are only
# tested there upstream (VCR'ed), which is why they are rewired.
REWIRED = {"TestSpaceAPIProduction"}
_sent = [0]  # requests sent to the localhub so far
_test_start: dict[str, int] = {}  # node id -> _sent when its setup began
_talking_fixtures: set[int] = set()  # id() of wider-scoped fixture definitions whose setup sent requests


# Requests to the localhub that are not the Hub API a test exercises: telemetry, and the agent-harness probe.
_NOT_API = ("/api/telemetry", "/api/agent-harnesses")


def _counting(send):
    def wrapper(self, request, *args, **kwargs):
        netloc = request.url.netloc
        if (netloc.decode() if isinstance(netloc, bytes) else netloc) == _HUB and not request.url.path.startswith(
                _NOT_API):
            _sent[0] += 1
        return send(self, request, *args, **kwargs)

    return wrapper


# Every client (HfApi's shared session, a test's own httpx2 call) sends through Client.send.
httpx2.Client.send = _counting(httpx2.Client.send)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    # A class-scoped fixture (a repo shared by the class) talks once, in the first test's setup; every test of the
    # class depends on it, so it counts for all of them.
    before = _sent[0]
    yield
    if _sent[0] > before and fixturedef.scope != "function":
        _talking_fixtures.add(id(fixturedef))


def pytest_runtest_setup(item: pytest.Item) -> None:
    _test_start.setdefault(item.nodeid, _sent[0])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    # One line per phase that decides the outcome: a setup error, a skip, the call, a teardown error.
    if not _REPORT or not (report.when == "call" or report.failed or report.skipped):
        return
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    talked = _sent[0] > _test_start.get(item.nodeid, _sent[0]) or any(
        id(d) in _talking_fixtures for ds in defs.values() for d in ds)
    reason = ""
    if report.failed:  # the exception's own message says most; the last traceback line is the fallback
        crash = getattr(report.longrepr, "reprcrash", None)
        reason = crash.message if crash else (report.longreprtext.strip().splitlines() or [""])[-1]
    elif report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
    with open(_REPORT, "a") as f:
        f.write(json.dumps({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                            "talked": talked, "reason": reason[:2000]}) + "\n")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A module that cannot be imported (a missing dependency) is one failed, offline entry: listed, not counted."""
    if _REPORT and report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        reason = crash.message if crash else (str(report.longrepr).strip().splitlines() or [""])[-1]
        with open(_REPORT, "a") as f:
            f.write(json.dumps({"nodeid": report.nodeid, "when": "collect", "outcome": "failed", "talked": False,
                                "reason": f"collection error: {reason}"[:2000]}) + "\n")


@pytest.fixture(autouse=True)
def patch_constants(monkeypatch: pytest.MonkeyPatch) -> Generator[None, None, None]:
    """A fresh cache and token path per test, as upstream's conftest does."""
    with SoftTemporaryDirectory() as cache_dir:
        for name, sub in (("HF_HOME", ""), ("HF_HUB_CACHE", "hub"), ("HF_XET_CACHE", "xet"),
                          ("HUGGINGFACE_HUB_CACHE", "hub"), ("HF_ASSETS_CACHE", "assets"),
                          ("HF_TOKEN_PATH", "token"), ("HF_STORED_TOKENS_PATH", "stored_tokens")):
            monkeypatch.setattr(constants, name, os.path.join(cache_dir, sub) if sub else cache_dir)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_EXPERIMENTAL_WARNING", True)
        yield


@pytest.fixture(autouse=True)
def xet_mode(request: pytest.FixtureRequest) -> None:
    """localhub speaks LFS, not Xet: tests that need Xet are out of scope (the runner deselects them too)."""
    if request.node.get_closest_marker("xet") is not None:
        pytest.skip("needs Xet (out of scope for localhub)")


def _rewired(item) -> bool:
    return item.cls is not None and item.cls.__name__ in REWIRED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect what needs huggingface.co or Xet, except the rewired production classes."""
    keep, drop = [], []
    for item in items:
        away = item.get_closest_marker("production") or item.get_closest_marker("xet")
        (drop if away and not _rewired(item) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def production_marker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("production") is None:
        return
    if not _rewired(request.node):
        pytest.skip("runs against huggingface.co (no network here)")
    # A rewired class builds its own client on ENDPOINT_PRODUCTION at call time: point that name at the localhub.
    monkeypatch.setattr(request.module, "ENDPOINT_PRODUCTION", ENDPOINT_STAGING)


@pytest.fixture(autouse=True)
def git_lfs_marker(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("git_lfs") is not None:
        pytest.skip("needs git-lfs and a git remote")


@pytest.fixture(scope="session")
def api() -> HfApi:
    return HfApi(endpoint=ENDPOINT_STAGING, token=TOKEN)


@pytest.fixture(scope="session")
def api_prod() -> HfApi:
    """Upstream's client on huggingface.co; here the localhub (the tests that use it are production-marked)."""
    return HfApi(endpoint=ENDPOINT_STAGING)


@pytest.fixture
def new_repo_id(api: HfApi) -> Generator[str, None, None]:
    """A fresh `USER/repo-...` id that does not exist yet; the repo is deleted after the test if it was created."""
    repo_id = f"{USER}/{repo_name()}"
    yield repo_id
    try:
        api.delete_repo(repo_id=repo_id, missing_ok=True)
    except HfHubHTTPError:  # a test that moved it elsewhere, or made it someone else's: not this fixture's failure
        pass


class RepoFactory(Protocol):
    def __call__(self, repo_type: str = "model", **kwargs) -> RepoUrl: ...


@pytest.fixture
def repo_factory(api: HfApi) -> Generator[RepoFactory, None, None]:
    """Create repos for a test and delete them when it ends."""
    created: list[tuple[str, str, str | None]] = []

    def factory(repo_type: str = "model", **kwargs) -> RepoUrl:
        if repo_type == "space" and "space_sdk" not in kwargs:
            kwargs["space_sdk"] = "gradio"
        kwargs.setdefault("repo_id", repo_name(prefix=repo_type))
        url = api.create_repo(repo_type=repo_type, **kwargs)
        created.append((url.repo_id, repo_type, kwargs.get("token")))
        return url

    yield factory
    for repo_id, repo_type, token in created:
        try:
            api.delete_repo(repo_id=repo_id, repo_type=repo_type, token=token)
        except Exception:
            pass
