"""A new user's own data and machine: TSV and arrow folders, TSV on the Hub, odd extensions, a clear error for files
that are not read, and `hubflow run` offline with no telemetry or database noise and with training progress lines.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from hubflow.config import DataConfig
from hubflow.kinds import kind_for
from hubflow.stages import pull
from tests.tiny import LABELS, push_tiny_bert, synthetic_rows

KIND = kind_for("text-classification")
HUBFLOW = str(Path(sys.executable).with_name("hubflow"))


def _tsv(path: Path, n: int, seed: int) -> None:
    rows = synthetic_rows(n, seed)
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{LABELS[y]}\n" for t, y in rows))


def test_a_folder_of_tsv_files_is_read_as_tab_separated(tmp_path):
    src = tmp_path / "glue"
    src.mkdir()
    _tsv(src / "train.tsv", 60, 0)
    _tsv(src / "test.tsv", 20, 1)
    raw = pull.load_raw_files(str(src), DataConfig(source=str(src)), KIND, str(tmp_path / "raw"))
    assert raw.splits == {"train": 60, "test": 20} and raw.columns == {"text": "text", "label": "label"}


def test_arrow_files_and_odd_extensions_with_data_format(tmp_path):
    import pyarrow.ipc as ipc

    src = tmp_path / "arrow"
    src.mkdir()
    for split, n, seed in (("train", 40, 2), ("test", 10, 3)):
        rows = synthetic_rows(n, seed)
        table = pa.table({"text": [t for t, _ in rows], "label": [LABELS[y] for _, y in rows]})
        with ipc.new_stream(str(src / f"{split}.arrow"), table.schema) as writer:
            writer.write_table(table)
    raw = pull.load_raw_files(str(src), DataConfig(source=str(src)), KIND, str(tmp_path / "raw-arrow"))
    assert raw.splits == {"train": 40, "test": 10}

    odd = tmp_path / "odd"
    odd.mkdir()
    _tsv(odd / "train.dat", 30, 4)
    with pytest.raises(ValueError) as err:
        pull.load_raw_files(str(odd), DataConfig(source=str(odd)), KIND, str(tmp_path / "raw-odd"))
    message = str(err.value)
    assert "found 1 files (extensions .dat)" in message and "parquet, csv, tsv, jsonl/json and arrow" in message
    assert "data.format" in message
    cfg = DataConfig(source=str(odd), format="tsv")
    assert pull.load_raw_files(str(odd), cfg, KIND, str(tmp_path / "raw-odd")).splits == {"train": 30}


def test_tsv_files_on_the_hub_are_read_at_the_pinned_sha(localhub, datasets_lib, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from hubflow.doors import hub

    monkeypatch.setenv("HF_TOKEN", localhub.token("alice"))
    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    repo = f"alice/glue-tsv-{uuid.uuid4().hex[:6]}"
    folder = tmp_path / "repo"
    folder.mkdir()
    _tsv(folder / "train.tsv", 50, 5)
    _tsv(folder / "test.tsv", 12, 6)
    api.create_repo(repo, repo_type="dataset")
    sha = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="dataset").oid
    pinned = hub.pin(repo, "dataset", "main", "data")
    raw = pull.write_raw_splits(hub.load_dataset_at(pinned, None), DataConfig(source=repo), KIND,
                                str(tmp_path / "raw"), repo, pinned.sha)
    assert pinned.sha == sha and raw.splits == {"train": 50, "test": 12}


def test_hubflow_run_offline_is_quiet_and_shows_progress(localhub, tmp_path):
    """The general command as a new user runs it on a laptop: embedded Prefect, a local TSV folder, the model on a
    private hub, publish on. No telemetry error, no database traceback; progress and the data line in the output;
    the card names the run plainly (no UI URL is configured, so there is no `None/...` link)."""
    import yaml
    from huggingface_hub import HfApi, ModelCard

    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    tag = uuid.uuid4().hex[:6]
    model_repo, target = f"alice/tiny-bert-run-{tag}", f"alice/own-data-{tag}"
    push_tiny_bert(api, model_repo, tmp_path / "bert", num_labels=3)
    src = tmp_path / "data"
    src.mkdir()
    _tsv(src / "train.tsv", 240, 7)
    _tsv(src / "test.tsv", 40, 8)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"repo_id": model_repo}, "data": {"source": str(src)}, "preprocess": {"max_length": 32},
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3}, "inference": {"shard_size": 20},
        "publish": {"enabled": True, "repo_id": target}, "artifact_store": str(tmp_path / "store"),
    }))
    # A user's shell: no Prefect server, no settings of ours; only the hub's address and the user's token.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DO_NOT_TRACK"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), HF_TOKEN=localhub.token("alice"))
    proc = subprocess.run([HUBFLOW, "run", str(recipe)], env=env, capture_output=True, text=True, timeout=900,
                          cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for noise in ("Traceback", "database is locked", "telemetry", "analytics"):
        assert noise not in out, (noise, out[-4000:])
    assert re.search(r"train +\d+% step \d+/\d+ loss [\d.]+, [\d.]+ samples/s, ETA \d+:\d\d", out), out[-3000:]
    data_line = r"hubflow - data \S+/data: (train: 240 rows, test: 40 rows|test: 40 rows, train: 240 rows); columns "
    assert re.search(data_line + r"text \((large_)?string\), label \((large_)?string\)", out), out[:4000]
    card = ModelCard.load(target, token=localhub.token("alice"))
    assert "None/" not in card.text and "flow run `" in card.text
