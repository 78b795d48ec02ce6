"""Training: `hubflow.stages.train.train_model` vs `transformers.Trainer`, same model, data and hyper-parameters.

Matched on both sides: all-MiniLM-L6-v2 with a fresh 4-way head, the same tokenized train split (1 epoch) and
validation split, batch size 32, eval batch size 128, AdamW at lr 5e-5 with weight decay 0 and no warm-up, linear
decay, grad-norm clipping at 1.0, fp32, seed 42. That is Trainer's defaults plus the batch sizes, so our TrainConfig
sets weight_decay=0 and warmup_ratio=0 to match. Each clock covers the whole job from a model folder to a written
model folder:

* ours     `train_model(...)`: load the split, build the model, train (length-grouped batches, padded per batch),
           evaluate on validation at the epoch end, one resumable checkpoint at the epoch end, then the final
           save_pretrained folder + history. `checkpoint_every_steps` is set far beyond the run's step count, so no
           mid-epoch checkpoints are written.
* Trainer  load the split, build the model, `Trainer(...)` with `TrainingArguments(report_to="none",
           save_strategy="no", eval_strategy="epoch")` (so it evaluates the same validation split once, as ours
           does), `train()`, then `save_model(...)`. Its default collator pads each (randomly drawn) batch.
* Trainer, grouped  the same, with `train_sampling_strategy="group_by_length"` (transformers 5's name for v4's
           `group_by_length=True`): its LengthGroupedSampler batches rows of similar length, its best setting for
           mixed lengths and the honest peer of our length-grouped batches (`train_vs_trainer_grouped`). It
           computes the lengths itself at start-up (no precomputed length column), inside its clock.

Work check, printed: every side took the same number of optimizer steps over the same rows.

Samples/s = train rows x epochs / wall seconds of the whole job.
"""

from __future__ import annotations

from pathlib import Path

from bench.common import (
    BATCH_SIZE,
    LABELS,
    Plan,
    Report,
    base_model_dir,
    describe,
    interleave,
    paired_ratio,
    timed_result,
)

LR, SEED = 5e-5, 42


def run(root: Path, tokenized, wanted: set[str], plan: Plan, report: Report) -> None:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from hubflow.config import TrainConfig
    from hubflow.doors import store
    from hubflow.refs import PinnedRepo
    from hubflow.stages.train import train_model
    from hubflow.tokenize import load_tokenized

    base = base_model_dir()
    pinned = PinnedRepo(repo_id="sentence-transformers/all-MiniLM-L6-v2", repo_type="model", revision="main",
                        sha="0" * 40)
    rows = tokenized.splits["train"]

    def ours_cfg(max_steps=None) -> TrainConfig:
        return TrainConfig(epochs=1, max_steps=max_steps, batch_size=BATCH_SIZE, eval_batch_size=128,
                           learning_rate=LR, weight_decay=0.0, warmup_ratio=0.0, seed=SEED,
                           checkpoint_every_steps=1_000_000)

    steps: dict[str, set[int]] = {"ours": set(), "trainer": set(), "trainer_grouped": set()}  # per timed repetition

    def ours(rep, max_steps=None) -> float:
        out = str(root / "train" / f"ours-{rep}")  # fresh: an existing resume checkpoint would be picked up
        seconds, ref = timed_result(lambda: train_model(tokenized, base, pinned, ours_cfg(max_steps), out))
        if max_steps is None:
            steps["ours"].add(len(store.read_json(ref.history_uri)["steps"]))
        return seconds

    def trainer(rep, max_steps=None, strategy="random") -> float:
        name = "trainer" if strategy == "random" else "trainer_grouped"
        out = root / "train" / f"{name}-{rep}"

        def go():
            dsd = load_tokenized(tokenized)
            tok = AutoTokenizer.from_pretrained(base)
            model = AutoModelForSequenceClassification.from_pretrained(
                base, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                label2id={n: i for i, n in enumerate(LABELS)},
            )
            args = TrainingArguments(
                output_dir=str(out), num_train_epochs=1, max_steps=max_steps or -1,
                per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=128, learning_rate=LR,
                seed=SEED, report_to="none", save_strategy="no", eval_strategy="epoch" if not max_steps else "no",
                disable_tqdm=True, train_sampling_strategy=strategy,
            )
            t = Trainer(model=model, args=args, train_dataset=dsd["train"], eval_dataset=dsd["validation"],
                        processing_class=tok)
            t.remove_callback(PrinterCallback)  # keeps the bench output to its own lines
            t.train()
            t.save_model(str(out / "model"))
            return t.state.global_step

        seconds, global_step = timed_result(go)
        if max_steps is None:
            steps[name].add(global_step)
        return seconds

    def trainer_grouped(rep, max_steps=None) -> float:
        return trainer(rep, max_steps, strategy="group_by_length")

    contenders = {"ours": ours}
    if "train_vs_trainer" in wanted:
        contenders["trainer"] = trainer
    if "train_vs_trainer_grouped" in wanted:
        contenders["trainer_grouped"] = trainer_grouped
    for fn in contenders.values():  # warm-up: imports, allocator, first backward
        fn("warmup", max_steps=2)
    times = interleave(contenders, plan.reps)

    report.figure(f"\n# training: {rows} train rows x 1 epoch, batch {BATCH_SIZE}, "
                  f"{tokenized.splits['validation']} validation rows, {plan.reps} repetitions")
    report.figure("  ours    hubflow.stages.train.train_model (whole job):    "
                  f"{describe(times['ours'], rows, 'samples')}")
    if "trainer" in times:
        report.figure("  Trainer transformers.Trainer (whole job):       "
                      f"{describe(times['trainer'], rows, 'samples')}")
        report.ratios["train_vs_trainer"] = paired_ratio(times["trainer"], times["ours"])
    if "trainer_grouped" in times:
        report.figure(f"  Trainer ... group_by_length (whole job):        "
                      f"{describe(times['trainer_grouped'], rows, 'samples')}")
        report.ratios["train_vs_trainer_grouped"] = paired_ratio(times["trainer_grouped"], times["ours"])
    report.figure("  work check, optimizer steps per run: "
                  + ", ".join(f"{k} {sorted(v)}" for k, v in steps.items() if v))
