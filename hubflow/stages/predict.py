"""Batch inference: a fine-tuned model over a tokenized split -> parquet shards + manifest in the store.

model (store URI + fingerprint) + tokenized split -> `{out_uri}/shard-00000-<id>.parquet`, ..., `manifest.json`
-> PredictionsRef. Shards cover input rows [i*shard_size, (i+1)*shard_size); each is named by a hash of what
determines its content, written atomically, and skipped when a rerun finds it: an interrupted run resumes.
The task kind (`tokenized.facts.task`) loads the predictor and turns a shard's rows into prediction rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from ..config import InferenceConfig
from ..devices import device_and_dtype
from ..doors import store
from ..kinds import kind_for
from ..refs import PredictionsRef, TokenizedRef
from .train import weights_fingerprint

Progress = Callable[[float, str], None]
log = logging.getLogger("hubflow")
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
    kind = kind_for(tokenized.facts.task)
    device, dtype = device_and_dtype()

    shards = []
    for i, start in enumerate(range(0, n, cfg.shard_size)):
        # batch_size and max_tokens_per_batch are left out: with attention masks they change padding, not results;
        # the kind names the settings that do change them (a causal LM's generation settings).
        key = [FORMAT, model_fingerprint, data_fingerprint, i, cfg.shard_size, str(dtype), kind.output_settings(cfg)]
        sid = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
        rows = min(cfg.shard_size, n - start)
        shards.append({"index": i, "id": sid, "file": f"shard-{i:05d}-{sid}.parquet", "start": start, "rows": rows})

    existing = store.ls(out_uri)  # one listing, not a request per shard
    reused = [s for s in shards if s["file"] in existing]
    reused_rows = sum(s["rows"] for s in reused)
    if reused:
        log.info("reused %d of %d prediction shards (%d rows) from an earlier run", len(reused), len(shards), reused_rows)
    started = time.perf_counter()
    predictor = None  # loaded on the first shard that needs it: a finished rerun never loads the model
    for done, shard in enumerate(shards):
        if shard["file"] not in existing:
            predictor = predictor or kind.load_predictor(_fetch(model_uri, model_fingerprint), device, dtype)
            part = table.slice(shard["start"], shard["rows"])
            rows = kind.predict_shard(predictor, part, cfg, shard["index"])
            store.write_parquet(store.join(out_uri, shard["file"]), rows)  # absent or complete, never half
        if on_progress:
            rows_done = shard["start"] + shard["rows"]
            seconds = time.perf_counter() - started
            rate = f", {(rows_done - reused_rows) / seconds:.1f} rows/s" if rows_done > reused_rows and seconds else ""
            on_progress((done + 1) / len(shards), f"shard {done + 1}/{len(shards)} ({rows_done}/{n} rows{rate})")

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
        "label_names": list(tokenized.facts.label_names),
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
    parts = [store.read_parquet(store.join(ref.uri, s["file"])) for s in manifest["shards"]]
    table = pa.concat_tables(parts) if parts else pa.table({"row_id": pa.array([], pa.int64())})
    if table.num_rows != ref.rows:
        raise ValueError(f"{ref.uri}: shards hold {table.num_rows} rows, the ref says {ref.rows}")
    return table


def _fetch(model_uri: str, fingerprint: str) -> Path:
    """A local folder holding the model (the store folder itself when local, else a cached download), checked to hold
    the weights the ref names."""
    key = fingerprint or hashlib.sha256(model_uri.encode()).hexdigest()
    # HUBFLOW_MODEL_CACHE: where a worker keeps downloaded models (large; put it on a disk with room).
    root = os.environ.get("HUBFLOW_MODEL_CACHE") or Path(tempfile.gettempdir(), "hubflow-models")
    cache = Path(root, key[:32])
    done = cache / ".complete"  # written last: a download cut short is fetched again, never half used
    if done.exists():
        return cache
    local = store.get_dir(model_uri, cache)
    if (actual := weights_fingerprint(local)) != fingerprint:
        raise ValueError(f"{model_uri} holds weights {actual[:12]}…, not the expected {fingerprint[:12]}…")
    if local == cache:
        done.touch()
    return local
