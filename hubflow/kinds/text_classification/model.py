"""Text classification models: load for training, validate, rank checkpoints, and predict probabilities fast.

    load_for_training(model_dir, facts, allow_pickle)   AutoModelForSequenceClassification with a head for the labels
    validate(model, eval_dl, accelerator, facts)        validation loss, accuracy, macro-F1 (gathered over processes)
    rank(metrics)                                       the order that picks the best checkpoint
    Classifier.load(folder, device, dtype)              the predictor: `probs(input_ids)` over length-sorted batches
    shard_rows(part, probs, label_names)                a prediction shard: row_id, text, label, pred, ..., probs

Speed of `probs`: the split's token ids stay one flat arrow buffer; each call uploads them once and cuts every batch
from it with a few tensor ops (length-sorted, padded to the batch's own max). Probabilities stay on the device until
the call ends, so the loop never waits on the host: per-batch overhead is a handful of kernel launches.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ...config import InferencePrecision
from ...devices import device_and_dtype, quantize_int8
from ...refs import ModelFacts
from .metrics import confusion_matrix, scores_from_confusion

log = logging.getLogger("hubflow")
TRAIN_COLUMNS = ["input_ids", "attention_mask", "labels"]


def load_for_training(model_dir: str, facts: ModelFacts, allow_pickle: bool = False):
    """The base model with a fresh classification head sized to `facts.label_names`, fp32 master weights.

    `allow_pickle` admits pytorch_model.bin; transformers loads it with torch's weights-only unpickler, which
    refuses anything but tensors and plain values (no code runs)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    names = list(facts.label_names)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        use_safetensors=None if allow_pickle else True,
        ignore_mismatched_sizes=True,  # a base model with another head (or none) gets a fresh one of the right size
        dtype=torch.float32,  # transformers 5 loads the checkpoint's dtype by default; train on fp32 master weights
    )
    if tokenizer.pad_token is None:
        # Decoder-only bases (GPT-2, Llama) ship without a pad token. Pad with EOS, as the ecosystem does: the
        # attention mask hides the padding, and the classification head pools the last token that is not padding.
        tokenizer.pad_token = tokenizer.eos_token
        log.info("the tokenizer has no pad token: padding with its EOS token %r", tokenizer.eos_token)
    if model.config.pad_token_id is None:  # last-token pooling finds the last real token by this id
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def collator(tokenizer, on_gpu: bool):
    from transformers import DataCollatorWithPadding

    # Multiples of 8 keep tensor-core shapes on GPU; on CPU they would only add padding.
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if on_gpu else None)


@torch.no_grad()
def validate(model, eval_dl, accelerator, facts: ModelFacts) -> dict[str, float]:
    """Validation loss, accuracy and macro-F1 over the whole split (gathered from every process)."""
    import torch.nn.functional as F

    model.eval()
    preds, labels, losses = [], [], []
    for batch in eval_dl:
        y = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        p, y, loss = accelerator.gather_for_metrics(
            (logits.argmax(-1), y, F.cross_entropy(logits, y, reduction="none"))
        )
        preds.append(p), labels.append(y), losses.append(loss)
    y_pred, y_true = torch.cat(preds).cpu().numpy(), torch.cat(labels).cpu().numpy()
    scores = scores_from_confusion(confusion_matrix(y_true, y_pred, len(facts.label_names)))
    return {
        "eval_loss": torch.cat(losses).mean().item(),
        "eval_accuracy": scores["accuracy"],
        "eval_macro_f1": scores["macro_f1"],
    }


def rank(metrics: dict[str, float]) -> tuple[float, float]:
    # Best = highest macro-F1 (accuracy hides a neglected class); on a tie, the lower validation loss.
    return metrics["eval_macro_f1"], -metrics["eval_loss"]


def predict_texts(model_dir: str | Path, texts: list[str], batch_size: int = 32, max_length: int | None = None,
                  precision: InferencePrecision = InferencePrecision.auto) -> list[dict]:
    """Classify a few raw texts (the gate's champion, the Space's reference): [{pred, label, score, probs}] in order."""
    clf = _cached_classifier(str(Path(model_dir).resolve()), os.stat(Path(model_dir, "config.json")).st_mtime_ns,
                             InferencePrecision(precision))
    limit = max_length or min(clf.tokenizer.model_max_length, clf.max_positions)
    ids = clf.tokenizer(list(texts), truncation=True, max_length=limit)["input_ids"]
    probs = clf.probs(pa.array(ids, type=pa.list_(pa.int64())), batch_size, max_tokens=1 << 62)
    names = clf.label_names
    return [
        {"pred": int(p.argmax()), "label": names[int(p.argmax())], "score": float(p.max()), "probs": p.tolist()}
        for p in probs
    ]


class Classifier:
    """A loaded model plus what batching needs (pad id, device); `probs` is the hot loop."""

    def __init__(self, model, tokenizer, device: torch.device):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id
        self.pad_id = int(pad or 0)
        self.label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or 1 << 62

    @classmethod
    def load(cls, local: str | Path, device: torch.device, dtype: torch.dtype) -> "Classifier":
        """A local save_pretrained folder (safetensors: hubflow's own checkpoints and published models).
        dtype torch.qint8: loaded in fp32, then its linear layers quantized to int8 (CPU)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        int8 = dtype == torch.qint8
        model = AutoModelForSequenceClassification.from_pretrained(
            local, dtype=torch.float32 if int8 else dtype, use_safetensors=True)
        model = model.to(device).eval()
        return cls(quantize_int8(model) if int8 else model, AutoTokenizer.from_pretrained(local), device)

    @torch.inference_mode()
    def probs(self, input_ids: pa.Array | pa.ChunkedArray, batch_size: int, max_tokens: int) -> np.ndarray:
        """Class probabilities [rows, classes] in input order, computed over length-sorted padded batches."""
        if isinstance(input_ids, pa.ChunkedArray):
            input_ids = input_ids.combine_chunks()
        if len(input_ids) == 0:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        offsets = input_ids.offsets.to_numpy().astype(np.int64)
        offsets -= offsets[0]  # a sliced array's offsets start mid-buffer; flatten() below starts at that point
        # One upload per call; a pad id appended at the end is where every padding position points.
        values = np.append(input_ids.flatten().to_numpy(zero_copy_only=False).astype(np.int64), self.pad_id)
        lengths = np.diff(offsets)
        order = np.argsort(-lengths, kind="stable")  # longest first: an out-of-memory shows on the first batch
        dev = self.device
        flat = torch.from_numpy(values).to(dev)
        starts = torch.from_numpy(offsets[:-1][order]).to(dev)
        lens = torch.from_numpy(lengths[order]).to(dev)
        positions = torch.arange(int(lengths.max()), device=dev)
        pad_at = len(values) - 1

        outputs, i = [], 0
        while i < len(order):
            width = int(lengths[order[i]])  # sorted: the first row of a batch is its longest
            size = min(batch_size, max(1, max_tokens // max(width, 1)), len(order) - i)
            pos = positions[:width]
            mask = pos < lens[i : i + size, None]
            ids = flat[torch.where(mask, starts[i : i + size, None] + pos, pad_at)]
            logits = self.model(input_ids=ids, attention_mask=mask.long()).logits
            outputs.append(logits.float().softmax(-1))
            i += size
        sorted_probs = torch.cat(outputs).cpu().numpy()  # the one host sync
        probs = np.empty_like(sorted_probs)
        probs[order] = sorted_probs
        return probs


@functools.lru_cache(maxsize=2)
def _cached_classifier(model_dir: str, _mtime_ns: int, precision: InferencePrecision) -> Classifier:
    # Keyed on the folder and its config's mtime, so a model rewritten in place is reloaded.
    return Classifier.load(model_dir, *device_and_dtype(precision))


def shard_rows(part: pa.Table, probs: np.ndarray, label_names: list[str]) -> pa.Table:
    pred = probs.argmax(axis=1)
    n, c = probs.shape
    columns = {
        "row_id": part.column("row_id").cast(pa.int64()),
        "text": part.column("text"),
    }
    if "labels" in part.column_names:
        columns["label"] = part.column("labels").cast(pa.int64())
    columns.update(
        pred=pa.array(pred, pa.int64()),
        pred_label=pc.take(pa.array(label_names, pa.string()), pa.array(pred)),
        score=pa.array(probs.max(axis=1), pa.float32()),
        probs=pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * c + 1, c), pa.int32()), pa.array(probs.ravel(), pa.float32())
        ),
    )
    return pa.table(columns)
