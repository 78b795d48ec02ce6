"""Batch inference: `hubflow.stages.predict.predict` vs `transformers.pipeline` and vs a bare forward loop.

Same classifier folder, same test split, batch size 32 on every side. What each side's clock covers:

* ours      the whole `predict(...)` call: load_from_disk of the tokenized split, model load from the folder (with
            its sha256 fingerprint check), length-sorted batching, forward passes, softmax, writing the parquet
            shards (text, pred, label name, score, probs) and the manifest, into a fresh out_uri each repetition.
* pipeline  `pipeline("text-classification", model=dir, tokenizer=dir, batch_size=32)` construction (model and
            tokenizer load) + the call over the texts with truncation at the same max_length. It tokenizes the
            texts itself (one call per text), which ours does not: our tokenization is `preprocess`, timed in its
            own comparison. Its results stay in memory (a list of dicts); nothing is written.
* bare      model load (`from_pretrained` + eval) + an `inference_mode` loop over batches built before the clock
            starts: the same token ids, sorted by length, padded per batch, as tensors. Softmax, then one numpy copy.
            The ideal a hand-written script reaches; its model load is also shown on its own.
* ours int8 the same `predict(...)` call with `InferenceConfig(precision="int8")`: the model loads in fp32 and its
            linear layers are quantized to int8 (part of the clock), then the same batches and writes. Compared with
            bare (fp32): `inference_int8_vs_bare`. Its accuracy cost is measured on the demo (bench/int8_accuracy.py).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from bench.common import BATCH_SIZE, Plan, Report, describe, interleave, paired_ratio, timed


def bare_batches(input_ids: list[list[int]], pad_id: int, batch_size: int):
    """Token ids → [(ids, mask)] tensors: longest first, each batch padded to its own longest row."""
    import torch

    order = sorted(range(len(input_ids)), key=lambda i: -len(input_ids[i]))
    batches = []
    for i in range(0, len(order), batch_size):
        rows = [input_ids[j] for j in order[i:i + batch_size]]
        width = len(rows[0])
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, :len(r)] = torch.tensor(r)
            mask[k, :len(r)] = 1
        batches.append((ids, mask))
    return batches


def padded_tokens(lengths: list[int], batch_size: int) -> tuple[int, int]:
    """Token positions the model computes (rows x batch width, summed): batches in input order vs length-sorted."""
    def total(ls):
        return sum(len(ls[i:i + batch_size]) * max(ls[i:i + batch_size]) for i in range(0, len(ls), batch_size))

    return total(lengths), total(sorted(lengths, reverse=True))


def run(root: Path, clf_dir: str, clf_fp: str, tokenized, wanted: set[str], plan: Plan, report: Report) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from hubflow.config import InferenceConfig
    from hubflow.stages.predict import predict, read_predictions
    from hubflow.tokenize import load_tokenized

    test = load_tokenized(tokenized)["test"]
    texts, ids = list(test["text"]), list(test["input_ids"])
    n = len(texts)
    cfg = InferenceConfig(batch_size=BATCH_SIZE)  # shard_size 1000, max_tokens_per_batch 8192 = 32 x 256: no effect
    int8_cfg = cfg.model_copy(update={"precision": "int8"})
    pad_id = AutoTokenizer.from_pretrained(clf_dir).pad_token_id
    batches = bare_batches(ids, pad_id, BATCH_SIZE)
    load_seconds: list[float] = []

    # Warm-ups run on a small part (the validation split, the first 64 texts, two batches): same code paths.
    refs: dict[str, list] = {"ours": [], "ours_int8": []}  # each repetition's PredictionsRef, for the work check

    def ours(rep, split="test", config=cfg, name="ours") -> float:
        # A parent folder of its own per repetition: predict adopts finished shards from sibling folders
        # (hubflow/stages/predict.py `_adopt`), so siblings would copy repetition 0's shards instead of running.
        out = str(root / "predictions" / f"{name}-{rep}" / "out")
        return timed(lambda: refs[name].append(predict(clf_dir, clf_fp, tokenized, split, config, out)))

    def ours_int8(rep, split="test") -> float:
        return ours(rep, split, int8_cfg, "ours_int8")

    def peer_pipeline(rep, k=None) -> float:
        def go():
            pipe = pipeline("text-classification", model=clf_dir, tokenizer=clf_dir, batch_size=BATCH_SIZE,
                            device="cpu")
            return pipe(texts[:k], truncation=True, max_length=plan.max_length)

        before = os.environ.get("TOKENIZERS_PARALLELISM")
        try:
            return timed(go)
        finally:
            # A pipeline call sets TOKENIZERS_PARALLELISM=false for the whole process when it is unset, which
            # would make every later Rust tokenizer call (preprocess, in the same `python -m bench`) single-threaded.
            if before is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = before

    @torch.inference_mode()
    def forward_all(model, k=None):
        probs = [model(input_ids=i, attention_mask=m).logits.float().softmax(-1) for i, m in batches[:k]]
        return torch.cat(probs).numpy()

    def bare(rep, k=None) -> float:
        def load():
            return AutoModelForSequenceClassification.from_pretrained(clf_dir, dtype=torch.float32).eval()

        holder = {}
        t_load = timed(lambda: holder.setdefault("m", load()))
        load_seconds.append(t_load)
        return t_load + timed(lambda: forward_all(holder["m"], k))

    contenders = {}
    if wanted & {"inference_vs_pipeline", "inference_vs_bare"}:
        contenders["ours"] = ours
    if "inference_int8_vs_bare" in wanted:
        contenders["ours_int8"] = ours_int8
    if "inference_vs_pipeline" in wanted:
        contenders["pipeline"] = peer_pipeline
    if wanted & {"inference_vs_bare", "inference_int8_vs_bare"}:
        contenders["bare"] = bare
    warmups = {"ours": lambda: ours("warmup", split="validation"), "pipeline": lambda: peer_pipeline("warmup", k=64),
               "bare": lambda: bare("warmup", k=2), "ours_int8": lambda: ours_int8("warmup", split="validation")}
    for name in contenders:  # imports, allocator, first-call paths
        warmups[name]()
    load_seconds.clear()
    times = interleave(contenders, plan.reps)

    def line(label: str, name: str) -> None:
        report.figure(f"  {label:<64}{describe(times[name], n, 'texts')}")

    report.figure(f"\n# inference: {n} texts, batch {BATCH_SIZE}, max_length {plan.max_length}, "
                  f"{plan.reps} repetitions")
    in_order, by_length = padded_tokens([len(i) for i in ids], BATCH_SIZE)
    report.figure(f"  (context) padded tokens: {in_order:,} in input order (the pipeline's batches) vs {by_length:,} "
                  f"length-sorted (ours, bare): {in_order / by_length:.2f}x")
    if "ours" in times:
        line("ours     hubflow.stages.predict.predict (incl. model load, shard writes):", "ours")
    if "ours_int8" in times:
        line("ours     ... precision int8 (incl. fp32 load + quantizing):", "ours_int8")
        written = {read_predictions(ref).num_rows for ref in refs["ours_int8"][1:]}  # [0] is the warm-up
        report.figure(f"           work check: each int8 repetition wrote {n} rows of probabilities: {written == {n}}")
    if "pipeline" in times:
        line("pipeline transformers.pipeline (incl. load + tokenize):", "pipeline")
        report.ratios["inference_vs_pipeline"] = paired_ratio(times["pipeline"], times["ours"])
    if "bare" in times:
        line("bare     inference_mode loop, pre-padded (incl. model load):", "bare")
        times["bare_forward"] = [t - lo for t, lo in zip(times["bare"], load_seconds)]
        report.figure(f"           of which model load: median {statistics.median(load_seconds):.2f} s")
        line("bare     forward only:", "bare_forward")
        if "ours" in times:
            report.figure("           ours vs bare forward only: "
                          f"{paired_ratio(times['bare_forward'], times['ours']):.2f}")
            report.ratios["inference_vs_bare"] = paired_ratio(times["bare"], times["ours"])
        if "ours_int8" in times:
            report.ratios["inference_int8_vs_bare"] = paired_ratio(times["bare"], times["ours_int8"])
