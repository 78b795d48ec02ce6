"""Batch inference: a fine-tuned classifier over a tokenized split -> parquet shards + manifest in the store.

model (store URI + fingerprint) + tokenized split -> `{out_uri}/shard-00000-<id>.parquet`, ..., `manifest.json`
-> PredictionsRef. Shards cover input rows [i*shard_size, (i+1)*shard_size); each is named by a hash of what
determines its content, written atomically, and skipped when a rerun finds it: an interrupted run resumes.

Speed: the split's token ids stay one flat arrow buffer; each shard's ids go to the device once, and every batch
is cut from it with a few tensor ops (length-sorted, padded to the batch's own max). Probabilities stay on the device
until the shard ends, so the loop never waits on the host: per-batch overhead is a handful of kernel launches.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from tasks import store
from tasks.config import InferenceConfig
from tasks.refs import PredictionsRef, TokenizedRef
from tasks.train import weights_fingerprint

Progress = Callable[[float, str], None]
FORMAT = "hubflow-predictions-v1"  # part of every shard id: a change of shard layout invalidates old shards


def predict(
    model_uri: str,
    model_fingerprint: str,
    tokenized: TokenizedRef,
    split: str,
    cfg: InferenceConfig,
    out_uri: str,
    on_progress: Progress | None = None,
) -> PredictionsRef:
    """Predict every row of `split`; rows out == rows in, in input order (see `read_predictions`)."""
    from datasets import load_from_disk

    dsd = load_from_disk(tokenized.uri, storage_options=store.storage_options(tokenized.uri))
    table = dsd[split].with_format("arrow")[:]
    n = table.num_rows
    data_fingerprint = hashlib.sha256(f"{tokenized.fingerprint}/{split}".encode()).hexdigest()[:16]
    device, dtype = _device_and_dtype()
    fs, root = store.fs_for(out_uri)
    fs.makedirs(root, exist_ok=True)
    label_names = _label_names(model_uri)

    shards = []
    for i, start in enumerate(range(0, n, cfg.shard_size)):
        # batch_size and max_tokens_per_batch are left out: with attention masks they change padding, not results.
        key = [FORMAT, model_fingerprint, data_fingerprint, i, cfg.shard_size, str(dtype)]
        sid = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
        rows = min(cfg.shard_size, n - start)
        shards.append({"index": i, "id": sid, "file": f"shard-{i:05d}-{sid}.parquet", "start": start, "rows": rows})

    existing = _listing(fs, root)  # one listing, not a request per shard
    classifier = None  # loaded on the first shard that needs it: a finished rerun never loads the model
    for done, shard in enumerate(shards):
        path = f"{root}/{shard['file']}"
        if shard["file"] not in existing:
            classifier = classifier or _Classifier.load(model_uri, model_fingerprint, device, dtype)
            part = table.slice(shard["start"], shard["rows"])
            probs = classifier.probs(part.column("input_ids"), cfg.batch_size, cfg.max_tokens_per_batch)
            _write_atomically(fs, path, _shard_table(part, probs, label_names))
        if on_progress:
            rows_done = shard["start"] + shard["rows"]
            on_progress((done + 1) / len(shards), f"shard {done + 1}/{len(shards)} ({rows_done}/{n} rows)")

    manifest = {
        "format": FORMAT,
        "model_uri": model_uri,
        "model_fingerprint": model_fingerprint,
        "data_fingerprint": data_fingerprint,
        "tokenized_uri": tokenized.uri,
        "split": split,
        "rows": n,
        "shard_size": cfg.shard_size,
        "dtype": str(dtype),
        "label_names": label_names,
        "shards": shards,
    }
    store.write_json(store.join(out_uri, "manifest.json"), manifest)
    return PredictionsRef(
        uri=store.join(out_uri), rows=n, shards=len(shards), model_fingerprint=model_fingerprint,
        data_fingerprint=data_fingerprint,
    )


def read_manifest(ref: PredictionsRef) -> dict[str, Any]:
    return store.read_json(store.join(ref.uri, "manifest.json"))


def read_predictions(ref: PredictionsRef) -> pa.Table:
    """All shards concatenated in input order: row_id, text, label (when known), pred, pred_label, score, probs."""
    manifest = read_manifest(ref)
    fs, root = store.fs_for(ref.uri)
    parts = [pq.read_table(f"{root}/{s['file']}", filesystem=fs) for s in manifest["shards"]]
    table = pa.concat_tables(parts) if parts else pa.table({"row_id": pa.array([], pa.int64())})
    if table.num_rows != ref.rows:
        raise ValueError(f"{ref.uri}: shards hold {table.num_rows} rows, the ref says {ref.rows}")
    return table


def predict_texts(
    model_dir: str | Path, texts: list[str], batch_size: int = 32, max_length: int | None = None
) -> list[dict]:
    """Classify a few raw texts (ad-hoc use, the Space app): [{pred, label, score, probs}] in input order."""
    clf = _cached_classifier(str(Path(model_dir).resolve()), os.stat(Path(model_dir, "config.json")).st_mtime_ns)
    limit = max_length or min(clf.tokenizer.model_max_length, clf.max_positions)
    ids = clf.tokenizer(list(texts), truncation=True, max_length=limit)["input_ids"]
    probs = clf.probs(pa.array(ids, type=pa.list_(pa.int64())), batch_size, max_tokens=1 << 62)
    names = clf.label_names
    return [
        {"pred": int(p.argmax()), "label": names[int(p.argmax())], "score": float(p.max()), "probs": p.tolist()}
        for p in probs
    ]


class _Classifier:
    """A loaded model plus what batching needs (pad id, device); `probs` is the hot loop."""

    def __init__(self, model, tokenizer, device: torch.device):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id
        self.pad_id = int(pad or 0)
        self.label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or 1 << 62

    @classmethod
    def load(cls, model_uri: str, fingerprint: str | None, device: torch.device, dtype: torch.dtype) -> "_Classifier":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        local = _fetch(model_uri, fingerprint)
        if fingerprint is not None and (actual := weights_fingerprint(local)) != fingerprint:
            raise ValueError(f"{model_uri} holds weights {actual[:12]}…, not the expected {fingerprint[:12]}…")
        model = AutoModelForSequenceClassification.from_pretrained(local, dtype=dtype, use_safetensors=True)
        return cls(model.to(device).eval(), AutoTokenizer.from_pretrained(local), device)

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


def _device_and_dtype() -> tuple[torch.device, torch.dtype]:
    # Half precision on GPU (bf16 where supported: fp16's range can overflow in logits); fp32 on CPU.
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cpu"), torch.float32


@functools.lru_cache(maxsize=2)
def _cached_classifier(model_dir: str, _mtime_ns: int) -> _Classifier:
    # Keyed on the folder and its config's mtime, so a model rewritten in place is reloaded.
    device, dtype = _device_and_dtype()
    return _Classifier.load(model_dir, None, device, dtype)


def _fetch(model_uri: str, fingerprint: str | None) -> Path:
    """A local folder holding the model: the store folder itself when local, else a cached download."""
    key = fingerprint or hashlib.sha256(model_uri.encode()).hexdigest()
    # HUBFLOW_MODEL_CACHE: where a worker keeps downloaded models (large; put it on a disk with room).
    root = os.environ.get("HUBFLOW_MODEL_CACHE") or Path(tempfile.gettempdir(), "hubflow-models")
    cache = Path(root, key[:32])
    done = cache / ".complete"  # written last: a download cut short is fetched again, never half used
    if fingerprint is not None and done.exists():
        return cache
    local = store.get_dir(model_uri, cache)
    if local == cache:
        done.touch()
    return local


def _label_names(model_uri: str) -> list[str]:
    cfg = store.read_json(store.join(model_uri, "config.json"))
    id2label = cfg.get("id2label") or {}
    return [id2label[str(i)] for i in range(len(id2label))]


def _shard_table(part: pa.Table, probs: np.ndarray, label_names: list[str]) -> pa.Table:
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


def _listing(fs, root: str) -> set[str]:
    try:
        return {Path(p).name for p in fs.ls(root, detail=False)}
    except FileNotFoundError:  # an object store has no empty folders: a fresh prefix does not exist yet
        return set()


def _write_atomically(fs, path: str, table: pa.Table) -> None:
    """A shard is absent or complete: a local file goes through a temp name + rename; an object-store PUT is atomic."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    if "file" in protocols:
        tmp = f"{path}.tmp-{os.getpid()}"
        Path(tmp).write_bytes(buf.getvalue())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, buf.getvalue())
