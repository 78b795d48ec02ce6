"""Conformance run: huggingface_hub's own tests against a fresh localhub.

    .venv/bin/python -m localhub.conformance [--keep] [--json out.json] [-k EXPR] [--modules test_hf_api ...]

What it does: `pip download` the source archive of the installed huggingface_hub (its tests are in it, its conftest.py
is not: localhub/conformance_conftest.py stands in), rewrite tests/testing_constants.py so ENDPOINT_STAGING is a
fresh localhub with the users, tokens and orgs those tests expect, run test_file_download, test_snapshot_download,
test_hf_api and test_repocard (or any modules of the suite given with --modules, e.g. test_hf_file_system) with
pytest (tests marked `production` or `xet` are deselected: they need huggingface.co or Xet; the production Space
tests, which create their own Space, run here too), and print passed/failed per test
class. The rate counts only tests that sent a Hub API request to the localhub; the
others are unit tests of the client and are listed apart. pytest-mock (the `mocker` fixture) and jedi are installed
with pip into the run's temp dir, never into the environment.
Figures and the known failures: docs/localhub.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

MODULES = ("test_file_download", "test_snapshot_download", "test_hf_api", "test_repocard")
MARKERS = ("api", "transfer", "inference", "xet", "no_xet", "production", "deprecated", "git_lfs", "vcr")
# The Hub's orgs the tests name: USER is in valid_org_hub; ENTERPRISE_USER runs ENTERPRISE_ORG.
ORG_FULLNAMES = {"valid_org_hub": "Dummy Hub Org"}
# TestSpaceAPIProduction's own account (VCR'ed upstream), and the public static Space it reads.
SPACE_USER, SPACE_TOKEN = "user", "hf_fake_token"
STATIC_SPACE = "victor/static-space"


def fetch_tests(version: str, work: Path) -> Path:
    """The `tests/` folder of huggingface_hub's sdist for `version`, unpacked under `work`."""
    dl = work / "sdist"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    f"huggingface_hub=={version}", "-d", str(dl)], check=True)
    archive = next(dl.glob("huggingface_hub-*.tar.gz"))
    root = work / "hfh"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/tests/" in m.name and m.isfile()]
        tar.extractall(root, members=members, filter="data")
    tests = next(root.glob("*/tests"))
    (tests / "__init__.py").write_text("")
    shutil.copy(Path(__file__).with_name("conformance_conftest.py"), tests / "conftest.py")
    return tests


# What upstream's test modules import that the environment lacks: pytest-mock (the `mocker` fixture) and jedi
# (test_hub_mixin), with jedi's one dependency. Installed into the run's temp dir only, never into the environment.
TEST_DEPS = ("pytest-mock", "jedi", "parso")


def install_test_deps(work: Path) -> Path | None:
    """TEST_DEPS into a private folder; None when pip cannot get them (the tests that need them then error)."""
    target = work / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        *TEST_DEPS], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{', '.join(TEST_DEPS)} not installed, tests that use them will error:", r.stderr.strip()[-300:])
        return None
    return target


def point_constants(tests: Path, url: str) -> dict:
    """Point ENDPOINT_STAGING at `url`; returns the constants (users and tokens) the hub must know."""
    path = tests / "testing_constants.py"
    text = re.sub(r'^ENDPOINT_STAGING = .*$', f'ENDPOINT_STAGING = "{url}"', path.read_text(), flags=re.M)
    path.write_text(text)
    consts: dict = {}
    exec(compile(text, str(path), "exec"), consts)
    return consts


def hub_accounts(c: dict) -> tuple[dict, dict]:
    users = {c["USER"]: (c["TOKEN"], "write"), c["OTHER_USER"]: (c["OTHER_TOKEN"], "write"),
             c["ENTERPRISE_USER"]: (c["ENTERPRISE_TOKEN"], "write"), SPACE_USER: (SPACE_TOKEN, "write")}
    orgs = {"valid_org_hub": {c["USER"]: "admin"}, c["ENTERPRISE_ORG"]: {c["ENTERPRISE_USER"]: "admin"}}
    return users, orgs


def configure_profiles(hub, c: dict) -> None:
    """Full names the tests check (whoami), through the admin API."""
    from .admin import admin_call, admin_token

    token = admin_token(hub.data_dir)
    admin_call("PUT", hub.url, f"/_localhub/users/{c['USER']}", token, {"fullname": c["FULL_NAME"]})
    for org, fullname in ORG_FULLNAMES.items():
        admin_call("PUT", hub.url, f"/_localhub/orgs/{org}", token, {"fullname": fullname})
    # The enterprise org's repos are private unless asked otherwise (test_create_repo_private_by_default).
    admin_call("PUT", hub.url, f"/_localhub/orgs/{c['ENTERPRISE_ORG']}", token, {"defaultPrivate": True})


def run_pytest(tests: Path, site: Path | None, report: Path, url: str, extra: list[str], modules: list[str]) -> int:
    root = tests.parent
    (root / "pytest.ini").write_text("[pytest]\nmarkers =\n" + "".join(f"    {m}: upstream marker\n" for m in MARKERS))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=url, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_TOKEN="",
               HF_HOME=str(root / "hf_home"), LOCALHUB_CONFORMANCE_REPORT=str(report),
               PYTHONPATH=os.pathsep.join(p for p in (str(site) if site else "", str(root)) if p),
               DISABLE_SYMLINKS_IN_WINDOWS_TESTS="1")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rN", "--tb=no", "--rootdir", str(root),
           "-c", str(root / "pytest.ini"), "--timeout", "300",
           # a module that cannot import is reported (conformance_conftest.py), the others still run
           "--continue-on-collection-errors", *[f"tests/{m}.py" for m in modules], *extra]
    return subprocess.run(cmd, cwd=root, env=env).returncode


def summarize(report: Path) -> dict:
    """Per class (module::Class, or the module for plain functions): counts of the tests that talked to the hub."""
    rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    final: dict[str, dict] = {}
    for r in rows:  # a teardown error after a pass makes the test a failure
        prev = final.get(r["nodeid"])
        if prev is None or r["outcome"] == "failed" or (r["when"] == "call" and prev["outcome"] != "failed"):
            final[r["nodeid"]] = {**r, "talked": r["talked"] or bool(prev and prev["talked"])}
    classes: dict[str, dict] = defaultdict(lambda: {"passed": 0, "failed": 0, "skipped": 0, "offline": 0,
                                                    "offline_failed": 0})
    failures, offline_failures = [], []
    for nodeid, r in final.items():
        parts = nodeid.split("::")
        cls = "::".join(parts[:2]) if len(parts) > 2 else parts[0]
        cls = cls.removeprefix("tests/")
        if r["outcome"] == "skipped":
            classes[cls]["skipped"] += 1
        elif not r["talked"]:
            classes[cls]["offline"] += 1
            if r["outcome"] == "failed":  # a client-side test that fails here (no network, no upstream fixtures)
                classes[cls]["offline_failed"] += 1
                offline_failures.append({"test": nodeid.removeprefix("tests/"), "reason": r["reason"]})
        else:
            classes[cls][r["outcome"]] += 1
            if r["outcome"] == "failed":
                failures.append({"test": nodeid.removeprefix("tests/"), "reason": r["reason"]})
    passed = sum(c["passed"] for c in classes.values())
    failed = sum(c["failed"] for c in classes.values())
    return {"classes": dict(sorted(classes.items())), "passed": passed, "failed": failed,
            "rate": passed / (passed + failed) if passed + failed else 0.0, "failures": failures,
            "offline_failures": offline_failures}


def print_summary(s: dict, seconds: float, modules: list[str]) -> None:
    print(f"\n{'class':<62} {'pass':>5} {'fail':>5} {'skip':>5} {'offline (failed)':>17}")
    for cls, c in s["classes"].items():
        offline = f"{c['offline']} ({c['offline_failed']})"
        print(f"{cls:<62} {c['passed']:>5} {c['failed']:>5} {c['skipped']:>5} {offline:>17}")
    for title, items in (("failed (talked to localhub)", s["failures"]),
                         ("failed without a request to localhub (not counted)", s["offline_failures"])):
        print(f"\n{title}:")
        for f in items:
            reason = " ".join(f["reason"].split())
            print(f"  {f['test']}\n      {reason[:300]}")
    print()
    for module in modules:
        rows = [c for cls, c in s["classes"].items() if cls.split("::")[0] == f"{module}.py"]
        p, f = sum(c["passed"] for c in rows), sum(c["failed"] for c in rows)
        print(f"{module + '.py':<30} {p:>4} passed, {f:>3} failed" + (f"  ({100 * p / (p + f):.1f}%)" if p + f else ""))
    print(f"\ntests that talked to localhub: {s['passed']} passed, {s['failed']} failed -> "
          f"{100 * s['rate']:.1f}% ({seconds:.0f} s; 'offline' = client-only tests, not counted)")


def main(argv: list[str] | None = None) -> int:
    import huggingface_hub

    from .ports import free_port
    from .server import LocalHub

    p = argparse.ArgumentParser(prog="python -m localhub.conformance", description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", action="store_true", help="keep the temp dir (tests, hub data, log)")
    p.add_argument("--json", help="also write the summary as JSON here")
    p.add_argument("--modules", nargs="+", default=list(MODULES), metavar="MODULE",
                   help=f"modules of huggingface_hub's tests/ (default: {' '.join(MODULES)})")
    p.add_argument("-k", dest="keyword", help="pytest -k expression, to rerun a subset")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="localhub-conformance-"))
    started = time.monotonic()
    hub = None
    try:
        tests = fetch_tests(huggingface_hub.__version__, work)
        missing = [m for m in args.modules if not (tests / f"{m.removesuffix('.py')}.py").is_file()]
        if missing:
            p.error(f"not in huggingface_hub {huggingface_hub.__version__}'s tests/: {', '.join(missing)}")
        args.modules = [m.removesuffix(".py") for m in args.modules]
        site = install_test_deps(work)
        port = free_port()
        consts = point_constants(tests, f"http://127.0.0.1:{port}")
        users, orgs = hub_accounts(consts)
        static = work / "static-space"
        static.mkdir()
        (static / "index.html").write_text("<h1>static</h1>\n")
        (static / "README.md").write_text("---\nsdk: static\n---\n")
        hub = LocalHub(work / "hub", users=users, orgs=orgs, port=port,
                       seed=[f"space:{STATIC_SPACE}={static}"]).start()
        configure_profiles(hub, consts)
        report = work / "report.jsonl"
        run_pytest(tests, site, report, hub.url, ["-k", args.keyword] if args.keyword else [], args.modules)
        summary = summarize(report)
        print_summary(summary, time.monotonic() - started, args.modules)
        if args.json:
            Path(args.json).write_text(json.dumps({**summary, "version": huggingface_hub.__version__}, indent=1))
        return 0 if summary["rate"] >= 0.95 else 1
    finally:
        if hub is not None:
            hub.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
