"""Preprocessing: `the kind's prepare (hubflow.kinds.text_classification.data)` vs a per-example `Dataset.map`
with the same tokenizer.

Same raw parquet splits (train/validation/test, 80/10/10 of the rows), same tokenizer, truncation at the same
max_length. Each clock covers parquet in → tokenized DatasetDict saved to disk:

* ours  `preprocess(...)`: read the parquet splits, label ids on whole Arrow columns, load the tokenizer (and hash
        its files for the fingerprint), tokenize in Arrow batches through the Rust backend, `save_to_disk`.
* peer  load the tokenizer, `Dataset.from_parquet` per split (into a fresh cache folder, as a user's first run),
        `.map(lambda ex: tok(ex["text"], truncation=True, max_length=...))` (not batched), `save_to_disk`.

* tokenizer  the limit (`preprocess_vs_tokenizer`): one batched call of the same fast tokenizer, already loaded, over
        the same texts, already in memory: `tok(texts, truncation=True, max_length=..., return_token_type_ids=False)`,
        i.e. the input_ids and attention_mask ours writes, as Python lists; nothing read, nothing written. What ours
        adds to it is reading parquet, loading and hashing the tokenizer, label ids, Arrow assembly and save_to_disk.

Also timed, for context only: the Rust tokenizer alone (`encode_batch_fast` over the same texts, already in memory,
all cores, ids only). No batched preprocess can beat it, so per-example / that is the ceiling of
preprocess_vs_per_example on this machine.

Work check, printed: ours' saved input_ids (every split, in order) equal the bare call's, row for row.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from bench.common import (
    Plan,
    Report,
    base_model_dir,
    describe,
    interleave,
    paired_ratio,
    raw_splits,
    timed,
    timed_result,
)


def run(root: Path, wanted: set[str], plan: Plan, report: Report) -> None:
    from datasets import Dataset, DatasetDict, load_from_disk
    from transformers import AutoTokenizer

    from hubflow.config import PreprocessConfig
    from hubflow.kinds.text_classification.data import prepare as preprocess

    base, rows = base_model_dir(), plan.preprocess_rows
    tenth = rows // 10
    raw, data_cfg = raw_splits(root, "preprocess", {"train": rows - 2 * tenth, "validation": tenth, "test": tenth},
                               seed=1)
    cfg = PreprocessConfig(max_length=plan.max_length)

    def ours(rep) -> float:
        return timed(lambda: preprocess(raw, base, cfg, data_cfg, str(root / "pre" / f"ours-{rep}")))

    def per_example(rep) -> float:
        out = root / "pre" / f"peer-{rep}"

        def go():
            tok = AutoTokenizer.from_pretrained(base)
            dsd = DatasetDict({
                s: Dataset.from_parquet(posixpath.join(raw.uri, f"{s}.parquet"), cache_dir=str(out / "cache"))
                for s in raw.splits
            })
            dsd = dsd.map(lambda ex: tok(ex["text"], truncation=True, max_length=plan.max_length))
            dsd.save_to_disk(str(out / "tokenized"))

        return timed(go)

    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    texts = [t for s in raw.splits for t in pq.read_table(posixpath.join(raw.uri, f"{s}.parquet"))["text"].to_pylist()]
    rust = Tokenizer.from_str(AutoTokenizer.from_pretrained(base).backend_tokenizer.to_str())
    rust.enable_truncation(plan.max_length)

    def rust_only(rep) -> float:
        return timed(lambda: rust.encode_batch_fast(texts))

    tok = AutoTokenizer.from_pretrained(base)
    bare_ids: list = []

    def tokenizer(rep) -> float:
        seconds, enc = timed_result(lambda: tok(texts, truncation=True, max_length=plan.max_length,
                                                return_token_type_ids=False))
        bare_ids[:] = enc["input_ids"]
        return seconds

    contenders = {"ours": ours}
    if "preprocess_vs_per_example" in wanted:
        contenders["per_example"] = per_example
    if "preprocess_vs_tokenizer" in wanted:
        contenders["tokenizer"] = tokenizer
    contenders["rust_only"] = rust_only
    for fn in contenders.values():
        fn("warmup")
    times = interleave(contenders, plan.reps)

    report.figure(f"\n# preprocess: {rows:,} rows (80/10/10 splits), max_length {plan.max_length}, "
                  f"{plan.reps} repetitions")
    report.figure("  ours        the kind's prepare (hubflow.kinds.text_classification.data):             "
                  f"{describe(times['ours'], rows, 'rows')}")
    if "per_example" in times:
        report.figure("  per-example Dataset.map(tok(ex['text'])):      "
                      f"{describe(times['per_example'], rows, 'rows')}")
    if "tokenizer" in times:
        report.figure(f"  tokenizer   one batched tok(texts) in memory:  {describe(times['tokenizer'], rows, 'rows')}")
    report.figure(f"  (context)   Rust encode_batch_fast alone:      {describe(times['rust_only'], rows, 'rows')}")
    if "per_example" in times:
        report.figure(f"              ceiling of preprocess_vs_per_example here (per-example / Rust alone): "
                      f"{paired_ratio(times['per_example'], times['rust_only']):.2f}")
        report.ratios["preprocess_vs_per_example"] = paired_ratio(times["per_example"], times["ours"])
    if "tokenizer" in times:
        saved = load_from_disk(str(root / "pre" / "ours-0"))
        ours_ids = [ids for s in raw.splits for ids in saved[s]["input_ids"]]
        report.figure(f"              work check: ours' saved input_ids == the bare call's, {len(bare_ids):,} rows: "
                      f"{ours_ids == bare_ids}")
        report.ratios["preprocess_vs_tokenizer"] = paired_ratio(times["tokenizer"], times["ours"])
