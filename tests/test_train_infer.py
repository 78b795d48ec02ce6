"""Training, batch inference and evaluation on a tiny BERT: learns, reloads, resumes, reproduces, skips done work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hubflow.config import InferenceConfig, Precision, TrainConfig
from hubflow.doors import store
from hubflow.kinds.text_classification.metrics import build_report, render_figures, render_markdown
from hubflow.kinds.text_classification.model import predict_texts
from hubflow.refs import CheckpointRef, PinnedRepo
from hubflow.stages.evaluate import evaluate_predictions
from hubflow.stages.facts import weights_fingerprint
from hubflow.stages.predict import merge_parts, predict, predict_part, read_manifest, read_predictions
from hubflow.stages.train import main, train_model
from tests.tiny import LABELS, make_tiny_bert, make_tiny_llama, make_tiny_tokenized

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = PinnedRepo(repo_id="tiny/bert", repo_type="model", revision="main", sha="0" * 40)
# 240 train rows in micro-batches of 8, two per optimizer step: 15 steps per epoch, 90 in all. Checkpoints every
# 7 steps land mid-epoch (7, 14, 21, ...) as well as at each epoch end.
CFG = TrainConfig(
    epochs=6, batch_size=8, gradient_accumulation_steps=2, learning_rate=5e-3, warmup_ratio=0.1,
    checkpoint_every_steps=7, seed=0, keep_resume_checkpoints=True,  # these tests resume finished runs
)
TOTAL_STEPS = 90
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model_dir = make_tiny_bert(root / "bert")
    return model_dir, make_tiny_tokenized(root / "tokenized", model_dir)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    model_dir, tokenized = tiny
    out = str(tmp_path_factory.mktemp("run") / "train")
    progress: list[tuple[float, str]] = []
    ref = train_model(tokenized, str(model_dir), BASE, CFG, out, on_progress=lambda f, m: progress.append((f, m)))
    return ref, progress


@pytest.fixture(scope="module")
def predicted(trained, tiny, tmp_path_factory):
    ref, _ = trained
    out = str(tmp_path_factory.mktemp("pred") / "test")
    cfg = InferenceConfig(batch_size=8, shard_size=16)
    return predict(ref.uri, ref.fingerprint, tiny[1], "test", cfg, out), cfg


def test_training_lowers_the_loss_and_beats_chance(trained, tiny):
    ref, progress = trained
    history = store.read_json(ref.history_uri)
    assert [s["step"] for s in history["steps"]] == list(range(1, TOTAL_STEPS + 1))
    losses = [s["loss"] for s in history["steps"]]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert [e["step"] for e in history["evals"]] == list(range(15, TOTAL_STEPS + 1, 15))
    best = max(history["evals"], key=lambda e: (e["eval_macro_f1"], -e["eval_loss"]))
    assert ref.metrics == {k: best[k] for k in ("eval_accuracy", "eval_macro_f1", "eval_loss")}
    # Three balanced classes: chance is 1/3. A model this small sometimes sits on a plateau that tells two
    # classes apart but not the third (transformers.Trainer does the same on this data), hence no higher bar.
    assert ref.metrics["eval_accuracy"] > 0.5
    assert ref.facts.label_names == LABELS and ref.base_model == BASE
    assert ref.facts == tiny[1].facts  # what the data made the model: task, max length, labels
    assert ref.hardware.startswith("cpu x") and ref.train_seconds > 0
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and all(0 <= f <= 1 for f in fractions)


def test_checkpoint_folder_reloads_with_tokenizer_labels_and_facts(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ref, _ = trained
    folder = Path(ref.uri)
    files = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "hubflow.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == ref.fingerprint
    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True)
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {n: i for i, n in enumerate(LABELS)}
    assert json.loads((folder / "hubflow.json").read_text()) == {
        "task": "text-classification", "max_length": ref.facts.max_length, "label_names": LABELS}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("goal").input_ids[0] == tokenizer.cls_token_id


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_where_an_unbroken_run_does(trained, tiny, tmp_path):
    model_dir, tokenized = tiny
    out = str(tmp_path / "train")

    class Killed(Exception):
        pass

    def kill_after_step_14_checkpoint(fraction: float, message: str) -> None:
        if message == "checkpoint saved at step 14":  # mid-epoch: 28 of 30 micro-batches consumed
            raise Killed

    with pytest.raises(Killed):
        train_model(tokenized, str(model_dir), BASE, CFG, out, on_progress=kill_after_step_14_checkpoint)
    assert store.read_json(f"{out}/resume/latest.json")["dir"].startswith("step-00000014-")

    messages: list[str] = []
    ref = train_model(tokenized, str(model_dir), BASE, CFG, out, on_progress=lambda f, m: messages.append(m))
    assert messages[0] == f"resumed from checkpoint at step 14/{TOTAL_STEPS}"
    history = store.read_json(ref.history_uri)
    assert history["resumed_from"] == [14]
    assert [s["step"] for s in history["steps"]] == list(range(1, TOTAL_STEPS + 1))  # nothing redone, nothing lost
    # Same batches skipped, same RNG stream restored: the result is the unbroken run's, bit for bit.
    unbroken, _ = trained
    assert ref.fingerprint == unbroken.fingerprint
    assert ref.metrics == unbroken.metrics


def test_resuming_with_other_settings_is_refused(trained, tiny):
    model_dir, tokenized = tiny
    ref, _ = trained
    out = str(Path(ref.uri).parent)
    with pytest.raises(ValueError, match="config.learning_rate"):
        train_model(tokenized, str(model_dir), BASE, CFG.model_copy(update={"learning_rate": 1e-4}), out)


def test_more_steps_continue_a_finished_run(tiny, tmp_path):
    model_dir, tokenized = tiny
    out = str(tmp_path / "train")
    short = CFG.model_copy(update={"max_steps": 10, "checkpoint_every_steps": 1000})
    train_model(tokenized, str(model_dir), BASE, short, out)
    ref = train_model(tokenized, str(model_dir), BASE, short.model_copy(update={"max_steps": 20}), out)
    history = store.read_json(ref.history_uri)
    assert history["resumed_from"] == [10]
    assert [s["step"] for s in history["steps"]] == list(range(1, 21))
    assert [e["step"] for e in history["evals"]] == [10, 15, 20]  # the partial epoch, its end, then the new end


def test_cli_prints_the_checkpoint_ref(tiny, tmp_path, capsys):
    model_dir, tokenized = tiny
    cfg = CFG.model_copy(update={"max_steps": 2})
    main([
        "--tokenized-ref", tokenized.model_dump_json(), "--model-dir", str(model_dir),
        "--base-model", BASE.model_dump_json(), "--config", cfg.model_dump_json(), "--out-uri", str(tmp_path / "cli"),
    ])
    ref = CheckpointRef.model_validate_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert ref.uri == store.join(str(tmp_path / "cli"), "model")


def test_predictions_cover_every_row_in_input_order(predicted, tiny):
    from datasets import load_from_disk

    pref, _ = predicted
    test = load_from_disk(tiny[1].uri)["test"]
    table = read_predictions(pref)
    assert pref.rows == table.num_rows == len(test) == 50
    assert [s["rows"] for s in read_manifest(pref)["shards"]] == [16, 16, 16, 2] and pref.shards == 4
    assert table.column("row_id").to_pylist() == test["row_id"]
    assert table.column("text").to_pylist() == test["text"]
    assert table.column("label").to_pylist() == test["labels"]
    probs = np.array(table.column("probs").to_pylist())
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert table.column("pred").to_pylist() == probs.argmax(axis=1).tolist()
    np.testing.assert_allclose(table.column("score").to_numpy(), probs.max(axis=1), rtol=1e-6)
    assert table.column("pred_label").to_pylist() == [LABELS[p] for p in table.column("pred").to_pylist()]


def test_predictions_reproduce_from_the_reloaded_model(predicted, trained):
    table = read_predictions(predicted[0])
    rows = [0, 7, 16, 31, 49]  # across shards
    texts = [table.column("text")[i].as_py() for i in rows]
    out = predict_texts(trained[0].uri, texts, batch_size=2)
    assert [o["pred"] for o in out] == [table.column("pred")[i].as_py() for i in rows]
    assert [o["label"] for o in out] == [table.column("pred_label")[i].as_py() for i in rows]
    np.testing.assert_allclose([o["probs"] for o in out], [table.column("probs")[i].as_py() for i in rows], atol=1e-5)


def test_a_rerun_writes_no_shard_and_a_lost_shard_is_redone_alone(predicted, trained, tiny):
    pref, cfg = predicted
    ref, _ = trained
    folder = Path(pref.uri)
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")}
    again = predict(ref.uri, ref.fingerprint, tiny[1], "test", cfg, pref.uri)
    assert again == pref
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")} == before

    lost = read_manifest(pref)["shards"][2]["file"]
    (folder / lost).unlink()
    predict(ref.uri, ref.fingerprint, tiny[1], "test", cfg, pref.uri)
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")}
    assert after.keys() == before.keys() and after[lost] != before[lost]
    assert {k: v for k, v in after.items() if k != lost} == {k: v for k, v in before.items() if k != lost}
    assert not list(folder.glob("*.tmp-*"))


def test_a_new_revision_with_rows_appended_reuses_every_unchanged_shard(trained, tiny, tmp_path, caplog):
    """Batch inference over a dataset that grew (a new revision: 20 rows appended to 50): the three full shards the
    old revision's job wrote (another folder of the same store) are taken over; only the last two are predicted, and
    the rows equal a fresh prediction's."""
    import logging

    from datasets import Dataset

    from hubflow.config import DataConfig
    from hubflow.kinds import kind_for
    from tests.tiny import synthetic_rows

    ref, _ = trained
    model_dir, _ = tiny
    kind, data = kind_for("text-classification"), DataConfig(source="x", test_split="test")
    texts = [t for t, _ in synthetic_rows(70, 11)]
    old, new = (kind.prepare_inference(Dataset.from_dict({"text": texts[:n]}), data, str(model_dir), ref.facts,
                                       str(tmp_path / "inputs")) for n in (50, 70))
    cfg = InferenceConfig(batch_size=8, shard_size=16)
    jobs = tmp_path / "store" / "predict"  # two jobs' folders in one store, as the predict task names them
    first = predict(ref.uri, ref.fingerprint, old, "test", cfg, str(jobs / "old"))
    with caplog.at_level(logging.INFO, logger="hubflow"):
        grown = predict(ref.uri, ref.fingerprint, new, "test", cfg, str(jobs / "new"))
    assert "reused 3 of 5 prediction shards (48 rows)" in caplog.text
    old_ids, new_ids = ([s["id"] for s in read_manifest(p)["shards"]] for p in (first, grown))
    assert new_ids[:3] == old_ids[:3] and new_ids[3] != old_ids[3]
    fresh = predict(ref.uri, ref.fingerprint, new, "test", cfg, str(tmp_path / "elsewhere" / "fresh"))
    assert read_predictions(grown).to_pylist() == read_predictions(fresh).to_pylist()


def test_other_batching_gives_the_same_predictions(predicted, trained, tiny, tmp_path):
    pref, cfg = predicted
    ref, _ = trained
    # Tiny batches under a 64-token budget: different padding, different batch boundaries.
    other_cfg = cfg.model_copy(update={"batch_size": 3, "max_tokens_per_batch": 64})
    other = predict(ref.uri, ref.fingerprint, tiny[1], "test", other_cfg, str(tmp_path / "other"))
    a, b = read_predictions(pref), read_predictions(other)
    assert a.column("pred").to_pylist() == b.column("pred").to_pylist()
    np.testing.assert_allclose(
        np.array(a.column("probs").to_pylist()), np.array(b.column("probs").to_pylist()), atol=1e-5
    )
    # Batching does not change results, so it is not part of a shard's identity.
    assert [s["id"] for s in read_manifest(pref)["shards"]] == [s["id"] for s in read_manifest(other)["shards"]]


def test_parts_merge_into_the_same_predictions_and_reuse_finished_shards(predicted, trained, tiny, tmp_path):
    """Fan-out: 3 parts of 4 shards, predicted in any order, merge into rows equal to the one-run predictions; a part
    whose shards another run already wrote loads no model; a set of parts with a gap or a stranger is refused."""
    pref, cfg = predicted
    ref, _ = trained
    out = str(tmp_path / "fan-out")
    parts = [predict_part(ref.uri, ref.fingerprint, tiny[1], "test", cfg, out, k, 3) for k in (2, 0, 1)]
    assert sorted((p.part, p.shards, p.rows) for p in parts) == [(0, 1, 16), (1, 1, 16), (2, 2, 18)]
    merged = merge_parts(parts)
    assert merged.rows == 50 and merged.shards == 4 and read_manifest(merged)["parts"] == 3
    a, b = read_predictions(pref), read_predictions(merged)
    assert a.column("row_id").to_pylist() == b.column("row_id").to_pylist() == list(range(50))
    assert a.column("pred").to_pylist() == b.column("pred").to_pylist()
    # Same shard ids as the single run: a job re-run with another fan-out (here: one part) redoes nothing.
    assert [s["id"] for s in read_manifest(pref)["shards"]] == [s["id"] for s in read_manifest(merged)["shards"]]
    folder = Path(out)
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")}
    assert predict(ref.uri, ref.fingerprint, tiny[1], "test", cfg, out) == merged
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")} == before

    with pytest.raises(ValueError, match="not parts 0..2"):
        merge_parts(parts[:2])
    (folder / read_manifest(merged)["shards"][3]["file"]).unlink()
    with pytest.raises(ValueError, match="shard files are missing"):
        merge_parts(parts)
    stranger = predict_part(ref.uri, ref.fingerprint, tiny[1], "test", cfg, str(tmp_path / "other"), 1, 3)
    with pytest.raises(ValueError, match="of one job"):
        merge_parts([parts[1], stranger, parts[0]])


def test_weights_that_do_not_match_the_fingerprint_are_refused(predicted, trained, tiny, tmp_path):
    pref, cfg = predicted
    ref, _ = trained
    with pytest.raises(ValueError, match="not the expected"):
        predict(ref.uri, "f" * 64, tiny[1], "test", cfg, str(tmp_path / "wrong"))


def test_metrics_match_a_hand_computed_confusion():
    # truth 0 0 0 1 1 2 / predicted 0 0 1 1 2 2; class 3 never occurs on either side.
    report = build_report(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2]), ["a", "b", "c", "d"])
    assert report["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    per = {c["label"]: c for c in report["per_class"]}
    assert (per["a"]["precision"], per["a"]["recall"], per["a"]["f1"]) == pytest.approx((1.0, 2 / 3, 0.8))
    assert (per["b"]["precision"], per["b"]["recall"], per["b"]["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (per["c"]["precision"], per["c"]["recall"], per["c"]["f1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    assert [c["support"] for c in report["per_class"]] == [3, 2, 1, 0]
    assert report["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)  # "d" is absent, so not averaged in
    md = render_markdown(report)
    assert "| accuracy | 0.6667 |" in md
    assert "| a | 1.0000 | 0.6667 | 0.8000 | 3 |" in md  # per-class row
    assert "| a | 2 | 1 | 0 | 0 |" in md  # confusion row


def test_evaluation_report_and_figures_land_in_the_store(predicted, trained, tmp_path):
    pref, _ = predicted
    ref, _ = trained
    out = str(tmp_path / "eval")
    ev = evaluate_predictions(pref, ref.facts, out, history_uri=ref.history_uri)
    table = read_predictions(pref)
    pred, label = table.column("pred").to_numpy(), table.column("label").to_numpy()
    assert ev.split == "test"
    assert ev.metrics["accuracy"] == pytest.approx(float(np.mean(pred == label)))
    assert ev.metrics["test_rows"] == 50
    report = store.read_json(ev.uri)
    assert np.array(report["confusion_matrix"]).sum() == 50 and report["macro_f1"] == ev.metrics["macro_f1"]
    for name in ("loss_curve.png", "confusion_matrix.png"):
        assert (Path(out) / name).read_bytes().startswith(PNG)
    assert set(render_figures(report, None)) == {"confusion_matrix.png"}


def test_tiny_llama_loads_and_runs(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_tiny_llama(tmp_path / "llama")
    assert (folder / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert tok.pad_token_id is not None and tok("the goal").input_ids[0] == tok.bos_token_id
    batch = tok(["the goal", "rain over the city today"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, batch.input_ids.shape[1], len(tok))


def test_one_process_trains_at_another_precision_after_the_first(tiny, trained, tmp_path):
    # A Prefect worker runs many trainings in one process; accelerate's singletons must not pin the first one's mode.
    model_dir, tokenized = tiny
    cfg = CFG.model_copy(update={"max_steps": 2, "precision": Precision.bf16})
    ref = train_model(tokenized, str(model_dir), BASE, cfg, str(tmp_path / "bf16"))
    assert ref.hardware.endswith("(bf16)")


def test_an_s3_store_carries_resume_state_datasets_shards_and_reports(tiny, s3, tmp_path, monkeypatch):
    monkeypatch.setenv("HUBFLOW_MODEL_CACHE", str(tmp_path / "models"))
    model_dir, tokenized = tiny
    store.put_dir(tokenized.uri, f"{s3}/tokenized")
    remote = tokenized.model_copy(update={"uri": f"{s3}/tokenized"})
    cfg = CFG.model_copy(update={"max_steps": 20})

    class Killed(Exception):
        pass

    def kill_at_step_14(fraction: float, message: str) -> None:
        if message == "checkpoint saved at step 14":
            raise Killed

    with pytest.raises(Killed):
        train_model(remote, str(model_dir), BASE, cfg, f"{s3}/run", on_progress=kill_at_step_14)
    ref = train_model(remote, str(model_dir), BASE, cfg, f"{s3}/run")
    assert ref.uri == f"{s3}/run/model" and store.read_json(ref.history_uri)["resumed_from"] == [14]

    pred = predict(ref.uri, ref.fingerprint, remote, "test", InferenceConfig(shard_size=16), f"{s3}/pred")
    assert read_predictions(pred).column("row_id").to_pylist() == list(range(50))
    assert (tmp_path / "models" / ref.fingerprint[:32] / ".complete").exists()  # the model was fetched once, whole
    assert predict(ref.uri, ref.fingerprint, remote, "test", InferenceConfig(shard_size=16), f"{s3}/pred") == pred
    ev = evaluate_predictions(pred, ref.facts, f"{s3}/eval", ref.history_uri)
    written = sorted(store.ls(f"{s3}/eval"))
    assert written == ["confusion_matrix.png", "loss_curve.png", "report.json"]
    assert ev.metrics["test_rows"] == 50


def test_pickle_weights_load_only_when_allowed_and_only_as_tensors(tiny, tmp_path):
    """`model.allow_pickle_weights`: a base model that ships only pytorch_model.bin trains when allowed (torch's
    weights-only unpickler), is refused otherwise, and a pickle that would run code is refused even when allowed."""
    import shutil

    from safetensors.torch import load_file

    model_dir, tokenized = tiny
    pickled = tmp_path / "pickled"
    shutil.copytree(model_dir, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    cfg = CFG.model_copy(update={"max_steps": 3})
    with pytest.raises(OSError, match="safetensors"):
        train_model(tokenized, str(pickled), BASE, cfg, str(tmp_path / "refused"))
    ref = train_model(tokenized, str(pickled), BASE, cfg, str(tmp_path / "allowed"), allow_pickle=True)
    assert (Path(ref.uri) / "model.safetensors").exists() and ref.facts.label_names == LABELS

    class Exploit:  # unpickling this would call os.system
        def __reduce__(self):
            import os

            return os.system, ("touch " + str(tmp_path / "pwned"),)

    torch.save({"bert.embeddings.word_embeddings.weight": Exploit()}, pickled / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        train_model(tokenized, str(pickled), BASE, cfg, str(tmp_path / "exploit"), allow_pickle=True)
    assert not (tmp_path / "pwned").exists()


def test_a_finished_run_keeps_its_model_and_history_but_not_its_resume_checkpoints(tiny, tmp_path):
    """Retention: by default nothing of the resume checkpoints stays once training completes."""
    model_dir, tokenized = tiny
    cfg = CFG.model_copy(update={"max_steps": 8, "keep_resume_checkpoints": False})
    ref = train_model(tokenized, str(model_dir), BASE, cfg, str(tmp_path / "run"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint_ref.json", "history.json", "model"]
    assert weights_fingerprint(ref.uri) == ref.fingerprint
