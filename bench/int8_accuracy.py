"""What int8 inference costs in accuracy: the demo classifier's test accuracy in fp32 and in int8.

The demo's own recipe (deployments/configs/demo.yaml: all-MiniLM-L6-v2, max_length 96, 2 epochs over the 2,000
generated support tickets, lr 1e-4, seed 42) is trained with hubflow's stages (no Hub, no Prefect), then the test
split (400 tickets, the rows `hubflow demo` reports its test accuracy on) is predicted twice by `predict`: with
`inference.precision: fp32` and `int8`, everything else equal. Printed: both accuracies, the change in points,
how many predictions differ, the largest change of a probability, and both predict times (400 rows: context only;
the speed comparison is `inference_int8_vs_bare`). At 400 rows one prediction is 0.25 points, so the same is also
done, for context, on fresh tickets: the generator's next seeds (more of the same distribution), without any text
that is in the demo's own splits.

`--quick` trains 20 steps instead of two epochs: a smoke run of the code path, not a figure to quote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common import Report, base_model_dir, timed_result


def run(root: Path, quick: bool, report: Report) -> None:
    from hubflow.config import load_recipe
    from hubflow.demo_data import build_demo_dataset
    from hubflow.kinds import kind_for
    from hubflow.kinds.text_classification.data import prepare
    from hubflow.ops.demo import RECIPE
    from hubflow.refs import PinnedRepo
    from hubflow.stages.predict import predict, read_predictions
    from hubflow.stages.pull import write_raw_splits
    from hubflow.stages.train import train_model

    recipe = load_recipe(RECIPE, [f"artifact_store={root / 'demo'}"])
    train_cfg = recipe.train.model_copy(update={"max_steps": 20} if quick else {})
    kind = kind_for(recipe.task)
    raw = write_raw_splits(build_demo_dataset(0), recipe.data, kind, str(root / "demo" / "raw"),
                           source=recipe.data.source, source_sha=None)
    tokenized = prepare(raw, base_model_dir(), recipe.preprocess, recipe.data, str(root / "demo" / "tokenized"))
    pinned = PinnedRepo(repo_id=recipe.model.repo_id, repo_type="model", revision="main", sha="0" * 40)
    train_seconds, ckpt = timed_result(
        lambda: train_model(tokenized, base_model_dir(), pinned, train_cfg, str(root / "demo" / "train")))

    seconds, probs = {}, {}
    for precision in ("fp32", "int8"):  # the same test rows, the recipe's batch and shard sizes; only this differs
        cfg = recipe.inference.model_copy(update={"precision": precision})
        seconds[precision], ref = timed_result(lambda: predict(
            ckpt.uri, ckpt.fingerprint, tokenized, "test", cfg, str(root / "demo" / f"predict-{precision}")))
        table = read_predictions(ref)
        label, probs[precision] = (np.array(table.column("label").to_pylist()),
                                   np.array(table.column("probs").to_pylist()))
    fresh = _fresh_accuracy(root, recipe, ckpt, 500 if quick else 4000)

    p32, p8 = probs["fp32"], probs["int8"]
    acc32, acc8 = (p32.argmax(1) == label).mean(), (p8.argmax(1) == label).mean()
    flips = int((p32.argmax(1) != p8.argmax(1)).sum())
    report.figure(f"\n# int8 accuracy: the demo classifier (demo.yaml, {'20 steps: --quick' if quick else '2 epochs'}, "
                  f"trained in {train_seconds:.0f} s), its test split of {len(label)} tickets")
    report.figure(f"  accuracy fp32 {acc32:.4f}, int8 {acc8:.4f}: change {100 * (acc8 - acc32):+.2f} points "
                  f"(target: within 0.5)")
    report.figure(f"  predictions that differ: {flips} of {len(label)}; largest probability change "
                  f"{np.abs(p32 - p8).max():.4f}")
    report.figure(f"  (context) predict on these {len(label)} rows: fp32 {seconds['fp32']:.2f} s, "
                  f"int8 {seconds['int8']:.2f} s")
    report.figure(f"  (context) {fresh['rows']:,} fresh tickets: accuracy fp32 {fresh['fp32']:.4f}, int8 "
                  f"{fresh['int8']:.4f}: change {100 * (fresh['int8'] - fresh['fp32']):+.2f} points; predictions that "
                  f"differ: {fresh['differ']}")
    report.notes.append(f"inference_int8_vs_bare's accuracy cost, the demo's test split: fp32 {acc32:.4f}, int8 "
                        f"{acc8:.4f} ({100 * (acc8 - acc32):+.2f} points; target within 0.5)")


def _fresh_accuracy(root: Path, recipe, ckpt, rows: int) -> dict:
    """fp32 and int8 accuracy of `ckpt` on `rows` generated tickets (seeds 1, 2, ...) none of which is a demo text."""
    from datasets import Dataset

    from hubflow.demo_data import build_demo_dataset
    from hubflow.kinds.text_classification.data import prepare_inference
    from hubflow.stages.predict import predict, read_predictions

    demo_texts = {t for split in build_demo_dataset(0).values() for t in split["text"]}
    texts, labels, seed = [], [], 1
    while len(texts) < rows:
        for split in build_demo_dataset(seed).values():
            for t, y in zip(split["text"], split["label"]):
                if t not in demo_texts and len(texts) < rows:
                    demo_texts.add(t)  # and no repeats among the fresh ones
                    texts.append(t), labels.append(y)
        seed += 1
    ds = Dataset.from_dict({"text": texts})
    tokenized = prepare_inference(ds, "text", "fresh", ckpt.uri, ckpt.facts, str(root / "demo" / "fresh"))
    out: dict = {"rows": rows}
    preds = {}
    for precision in ("fp32", "int8"):
        cfg = recipe.inference.model_copy(update={"precision": precision})
        ref = predict(ckpt.uri, ckpt.fingerprint, tokenized, "fresh", cfg, str(root / "demo" / f"fresh-{precision}"))
        preds[precision] = np.array(read_predictions(ref).column("pred").to_pylist())  # input order
        out[precision] = float((preds[precision] == np.array(labels)).mean())
    out["differ"] = int((preds["fp32"] != preds["int8"]).sum())
    return out
