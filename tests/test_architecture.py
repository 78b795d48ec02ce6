"""The shape of the code: the import arrows (import-linter's contracts in pyproject.toml) and the installed names.

The repo keeps flows/ and tasks/ at the top; installed, they are `hubflow.flows` and `hubflow.tasks`. import-linter
reads packages from one directory tree, so the contracts run over a copy of the tree in its installed layout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def installed_layout(into: Path) -> Path:
    shutil.copytree(ROOT / "hubflow", into / "hubflow", ignore=IGNORE)
    shutil.copytree(ROOT / "flows", into / "hubflow" / "flows", ignore=IGNORE)
    shutil.copytree(ROOT / "tasks", into / "hubflow" / "tasks", ignore=IGNORE)
    shutil.copytree(ROOT / "localhub", into / "localhub", ignore=IGNORE)
    return into


def test_import_contracts_hold(tmp_path):
    tree = installed_layout(tmp_path / "tree")
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "6 kept, 0 broken" in out.stdout, out.stdout


def test_a_contract_breach_fails(tmp_path):
    """The check can fail: a library module that imports a task breaks the layers contract."""
    tree = installed_layout(tmp_path / "tree")
    pull = tree / "hubflow" / "stages" / "pull.py"
    pull.write_text(pull.read_text() + "\nfrom hubflow.tasks import common  # noqa\n")
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    assert out.returncode == 1 and "hubflow.stages.pull -> hubflow.tasks.common" in out.stdout, out.stdout


def test_the_wheel_installs_only_namespaced_packages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("hubflow-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"hubflow", "localhub"}, top
    assert {"hubflow/flows/pipeline.py", "hubflow/tasks/pipeline.py",
            "hubflow/kinds/text_classification/space_app/app.py", "hubflow/kinds/causal_lm/data.py",
            "hubflow/kinds/causal_lm/space_app/app.py", "localhub/sandbox.py"} <= set(names)


def test_the_train_key_covers_the_code_that_picks_the_best_checkpoint(tmp_path, monkeypatch):
    """The validation scores that rank checkpoints live in the task kind's package; the train stage's key hashes
    every module of it, so editing any of them retrains instead of reusing a stale model."""
    from hubflow.caching import code_version
    from hubflow.refs import ModelFacts, TokenizedRef
    from hubflow.tasks.common import _modules
    from tests.tiny import LABELS

    tokenized = TokenizedRef(uri="/x", fingerprint="f", splits={"train": 1},
                             facts=ModelFacts(task="text-classification", max_length=8, label_names=LABELS))
    assert "hubflow.kinds.text_classification" in _modules("train", {"tokenized": tokenized})
    package = tmp_path / "fakekind"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "metrics.py").write_text("def rank(m): return m['f1']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_version("fakekind")
    (package / "metrics.py").write_text("def rank(m): return -m['loss']\n")
    code_version.cache_clear()
    assert code_version("fakekind") != before
