"""hubflow's stages against the peers a user would otherwise reach for, in one run; prints `name: ratio` lines.

    python -m bench                          # everything below except rerun_vs_first (~13 min on 2 quiet cores)
    python -m bench --quick                  # small sizes, one repetition: a smoke run (~100 s)
    python -m bench --only train_vs_trainer  # one comparison (repeatable)
    python -m bench.lfs                      # localhub LFS throughput (a separate benchmark)

Ratios (higher is better, except rerun_vs_first):
    inference_vs_pipeline      hubflow.stages.predict.predict vs transformers.pipeline          target >= 3
    inference_vs_bare          ... vs a bare inference_mode loop over pre-padded batches   target >= 0.9
    inference_int8_vs_bare     ... with inference.precision int8 vs the same bare fp32 loop  target >= 1.5
                               (and the demo's test accuracy in fp32 and int8: within 0.5 points; it trains the demo)
    train_vs_trainer           hubflow.stages.train.train_model vs transformers.Trainer       target >= 1.3
    train_vs_trainer_grouped   ... vs Trainer with train_sampling_strategy="group_by_length"   target >= 1.1
    preprocess_vs_per_example  the kind's prepare (kinds/text_classification/data.py) vs per-example Dataset.map
                                                                                            target >= 5
    preprocess_vs_tokenizer    ... vs one batched call of the fast tokenizer on texts in memory (the limit)
                                                                                            target >= 0.85
    generate_vs_pipeline       causal LM: predict's batch generation vs pipeline("text-generation")   target >= 2
    generate_vs_bare           ... vs a bare length-sorted, left-padded model.generate loop           target >= 0.9
    sft_vs_trl                 causal LM: train_model(method lora) tokens/s vs trl.SFTTrainer + peft  target >= 1.0
    embed_vs_sentence_transformers       sentence embeddings: Encoder texts/s vs SentenceTransformer.encode
                                         at its best batch size (same vectors within 1e-5)         target >= 1.0
    embed_int8_vs_sentence_transformers  ... Encoder int8 vs the same peer (and the demo's recall@10 in fp32 and
                                         int8: within 1 point)                                      target >= 1.5
    embed_train_vs_st_trainer            train_model (MNRL) pairs/s vs SentenceTransformerTrainer + MNRL  >= 1.3
                               (--only embeddings: these three; bench/embeddings.py)
    serve_vs_naive             hubflow serve req/s at 32 clients vs FastAPI + pipeline per request (its best
                               setting; p95 <= 0.5 s)                                        target >= 3
    serve_vs_batch             hubflow serve texts/s at 64 clients vs offline predict (the limit)   target >= 0.7
    chat_serve_vs_sequential   causal LM served: tokens/s, 8 concurrent chats vs one at a time       target >= 2.5
                               (--only serving: these three; bench/serving.py)
    rerun_vs_first             unchanged pipeline rerun / first run (lower is better) target <= 0.10 (opt-in)

Each contender is warmed up once, then the contenders run back to back in rotating order; the ratio is the median
over repetitions of peer seconds / our seconds. torch uses os.cpu_count() intra-op threads on every side (the causal-LM
comparisons: 2, set by bench/causal_lm.py).
See docs/benchmarks.md for what each clock covers and the recorded figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

RATIOS = ["inference_vs_pipeline", "inference_vs_bare", "inference_int8_vs_bare", "train_vs_trainer",
          "train_vs_trainer_grouped", "preprocess_vs_per_example", "preprocess_vs_tokenizer",
          "generate_vs_pipeline", "generate_vs_bare", "sft_vs_trl", "embed_vs_sentence_transformers",
          "embed_int8_vs_sentence_transformers", "embed_train_vs_st_trainer", "serve_vs_naive", "serve_vs_batch",
          "chat_serve_vs_sequential", "rerun_vs_first"]
CAUSAL_LM = {"generate_vs_pipeline", "generate_vs_bare", "sft_vs_trl"}  # bench/causal_lm.py: its own model and sizes
DEFAULT = RATIOS[:-1]  # rerun_vs_first starts localhub and Prefect and runs the pipeline twice: only on request
TARGETS = {"inference_vs_pipeline": ">= 3", "inference_vs_bare": ">= 0.9", "inference_int8_vs_bare": ">= 1.5",
           "train_vs_trainer": ">= 1.3", "train_vs_trainer_grouped": ">= 1.1", "preprocess_vs_per_example": ">= 5",
           "preprocess_vs_tokenizer": ">= 0.85", "generate_vs_pipeline": ">= 2", "generate_vs_bare": ">= 0.9",
           "sft_vs_trl": ">= 1.0", "embed_vs_sentence_transformers": ">= 1.0",
           "embed_int8_vs_sentence_transformers": ">= 1.5", "embed_train_vs_st_trainer": ">= 1.3",
           "serve_vs_naive": ">= 3", "serve_vs_batch": ">= 0.7", "chat_serve_vs_sequential": ">= 2.5",
           "rerun_vs_first": "<= 0.10"}
INFERENCE = {"inference_vs_pipeline", "inference_vs_bare", "inference_int8_vs_bare"}
TRAINING = {"train_vs_trainer", "train_vs_trainer_grouped"}
PREPROCESS = {"preprocess_vs_per_example", "preprocess_vs_tokenizer"}
EMBEDDINGS = {"embed_vs_sentence_transformers", "embed_int8_vs_sentence_transformers", "embed_train_vs_st_trainer"}
SERVING = {"serve_vs_naive", "serve_vs_batch", "chat_serve_vs_sequential"}  # bench/serving.py: server processes
GROUPS = {"embeddings": EMBEDDINGS, "serving": SERVING}  # --only NAME of a group runs all its comparisons


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and one repetition (smoke run)")
    parser.add_argument("--only", action="append", choices=RATIOS + list(GROUPS), metavar="NAME",
                        help=f"run only this comparison (repeatable): {', '.join(RATIOS + list(GROUPS))}")
    parser.add_argument("--reps", type=int, help="timed repetitions per contender (default 3, --quick 1)")
    parser.add_argument("--max-length", type=int, default=128,
                        help="truncation length on every side (default 128, PreprocessConfig's default)")
    args = parser.parse_args(argv)
    wanted = set().union(*(GROUPS.get(name, {name}) for name in args.only or DEFAULT))

    # Offline, quiet, and no stray cache writes outside the scratch folder: set before the libraries load.
    root = Path(tempfile.mkdtemp(prefix="hubflow-bench-"))
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                      HF_DATASETS_CACHE=str(root / "hf_datasets"), TRANSFORMERS_VERBOSITY="error",
                      HF_HUB_DISABLE_PROGRESS_BARS="1")
    # Trainer's default dataloader_pin_memory=True warns on every run without a GPU; it changes nothing on CPU.
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator is found")
    try:
        run(root, wanted, args.quick, args.reps, args.max_length)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, wanted: set[str], quick: bool, reps: int | None, max_length: int) -> None:
    from dataclasses import replace

    import datasets
    import torch
    import transformers

    from bench.common import FULL, QUICK, Report, classifier_dir, set_threads, tokenized_splits

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    plan = replace(QUICK if quick else FULL, max_length=max_length)
    plan = replace(plan, reps=reps or plan.reps)
    threads = set_threads()
    started = time.perf_counter()
    print(f"hubflow bench: torch {torch.__version__}, {threads} intra-op threads (os.cpu_count()), "
          f"cuda={torch.cuda.is_available()}, {'quick' if quick else 'full'} sizes, {plan.reps} repetition(s), "
          f"max_length {plan.max_length}", flush=True)
    report = Report()

    if wanted & (INFERENCE | TRAINING):
        split_sizes = {"train": plan.train_rows, "validation": plan.val_rows, "test": plan.infer_rows}
        tokenized = tokenized_splits(root, "main", split_sizes, plan.max_length)
    if wanted & INFERENCE:
        from bench import inference

        clf_dir, clf_fp = classifier_dir(root)
        inference.run(root, clf_dir, clf_fp, tokenized, wanted, plan, report)
    if "inference_int8_vs_bare" in wanted:
        from bench import int8_accuracy

        int8_accuracy.run(root, quick, report)
    if wanted & TRAINING:
        from bench import training

        training.run(root, tokenized, wanted, plan, report)
    if wanted & PREPROCESS:
        from bench import preprocessing

        preprocessing.run(root, wanted, plan, report)
    if wanted & CAUSAL_LM:
        from bench import causal_lm

        causal_lm.run(root, wanted, quick, plan.reps, report)
    if wanted & EMBEDDINGS:
        from bench import embeddings

        embeddings.run(root, wanted, quick, plan.reps, report)
    if wanted & SERVING:
        from bench import serving

        serving.run(root, wanted, quick, plan.reps, report)
    if "rerun_vs_first" in wanted:
        from bench import rerun

        rerun.run(root, quick, report)

    print(f"\n# ratios ({time.perf_counter() - started:.0f} s in all; higher is better except rerun_vs_first; "
          "targets: " + ", ".join(f"{n} {TARGETS[n]}" for n in RATIOS if n in report.ratios) + ")")
    for name in RATIOS:  # exactly `name: ratio`, one per line, for whoever parses this
        if name in report.ratios:
            print(f"{name}: {report.ratios[name]:.2f}")
    for note in report.notes:
        print(f"# {note}")


if __name__ == "__main__":
    main()
