"""Batch inference: `tasks.infer.predict` vs `transformers.pipeline` and vs a bare forward loop.

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
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.common import BATCH_SIZE, MAX_LENGTH, Report, describe, interleave, paired_ratio, timed


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


def run(root: Path, clf_dir: str, clf_fp: str, tokenized, wanted: set[str], reps: int, report: Report) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from tasks.config import InferenceConfig
    from tasks.data import load_tokenized
    from tasks.infer import predict

    test = load_tokenized(tokenized)["test"]
    texts, ids = list(test["text"]), list(test["input_ids"])
    n = len(texts)
    cfg = InferenceConfig(batch_size=BATCH_SIZE)  # shard_size 1000, max_tokens_per_batch 8192 = 32 x 256: no effect
    pad_id = AutoTokenizer.from_pretrained(clf_dir).pad_token_id
    batches = bare_batches(ids, pad_id, BATCH_SIZE)
    load_seconds: list[float] = []

    # Warm-ups run on a small part (the validation split, the first 64 texts, two batches): same code paths.
    def ours(rep, split="test") -> float:
        out = str(root / "predictions" / f"ours-{rep}")  # fresh: a finished shard would be skipped
        return timed(lambda: predict(clf_dir, clf_fp, tokenized, split, cfg, out))

    def peer_pipeline(rep, k=None) -> float:
        def go():
            pipe = pipeline("text-classification", model=clf_dir, tokenizer=clf_dir, batch_size=BATCH_SIZE,
                            device="cpu")
            return pipe(texts[:k], truncation=True, max_length=MAX_LENGTH)

        return timed(go)

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

    contenders = {"ours": ours}
    if "inference_vs_pipeline" in wanted:
        contenders["pipeline"] = peer_pipeline
    if "inference_vs_bare" in wanted:
        contenders["bare"] = bare
    warmups = {"ours": lambda: ours("warmup", split="validation"), "pipeline": lambda: peer_pipeline("warmup", k=64),
               "bare": lambda: bare("warmup", k=2)}
    for name in contenders:  # imports, allocator, first-call paths
        warmups[name]()
    load_seconds.clear()
    times = interleave(contenders, reps)

    report.figure(f"\n# inference: {n} texts, batch {BATCH_SIZE}, max_length {MAX_LENGTH}, {reps} repetitions")
    report.figure(f"  ours     tasks.infer.predict (incl. model load, shard writes): {describe(times['ours'], n, 'texts')}")
    if "pipeline" in times:
        report.figure(f"  pipeline transformers.pipeline (incl. load + tokenize):        "
                      f"{describe(times['pipeline'], n, 'texts')}")
        report.ratios["inference_vs_pipeline"] = paired_ratio(times["pipeline"], times["ours"])
    if "bare" in times:
        report.figure(f"  bare     inference_mode loop, pre-padded (incl. model load):   {describe(times['bare'], n, 'texts')}")
        forward_only = [t - lo for t, lo in zip(times["bare"], load_seconds)]
        report.figure(f"           of which model load: median {statistics.median(load_seconds):.2f} s; "
                      f"forward only: {describe(forward_only, n, 'texts')}")
        report.ratios["inference_vs_bare"] = paired_ratio(times["bare"], times["ours"])
        report.notes["inference_vs_bare_forward_only"] = f"{paired_ratio(forward_only, times['ours']):.2f}"
