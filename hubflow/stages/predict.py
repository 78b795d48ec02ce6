"""Batch inference: a fine-tuned model over a tokenized split -> parquet shards + manifest in the store.

model (store URI + fingerprint) + tokenized split -> `{out_uri}/shard-00000-<id>.parquet`, ..., `manifest.json`
-> PredictionsRef. Shards cover input rows [i*shard_size, (i+1)*shard_size); each is named by a hash of what
determines its content, written atomically, and skipped when a rerun finds it: an interrupted run resumes.
The task kind (`tokenized.facts.task`) loads the predictor and turns a shard's rows into prediction rows.

Fan-out: `predict_part(..., part=k, parts=P)` predicts the k-th of P contiguous blocks of shards and writes the
part's manifest (`parts/part-k-of-P.json`); `merge_parts` checks the parts cover every row once, in order, and
writes `manifest.json`. One machine is the same path with P = 1 (`predict`), so both are always exercised.
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

from .. import software
from ..config import InferenceConfig, for_kind
from ..devices import device_and_dtype
from ..doors import store
from ..kinds import kind_for
from ..refs import PredictionsPart, PredictionsRef, TokenizedRef
from .facts import weights_fingerprint

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
    part = predict_part(model_uri, model_fingerprint, tokenized, split, cfg, out_uri, 0, 1, on_progress)
    return merge_parts([part])


def part_bounds(shards: int, part: int, parts: int) -> range:
    """The shard indexes of part `part` of `parts`: contiguous blocks whose sizes differ by at most one."""
    return range(part * shards // parts, (part + 1) * shards // parts)


def predict_part(
    model_uri: str,
    model_fingerprint: str,
    tokenized: TokenizedRef,
    split: str,
    cfg: InferenceConfig,
    out_uri: str,
    part: int = 0,
    parts: int = 1,
    on_progress: Progress | None = None,
) -> PredictionsPart:
    """Predict the shards of one part; finished shards (from any earlier run or part) are skipped."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} of {parts}: a part index is 0..parts-1")
    dsd = store.load_dataset(tokenized.uri)
    n = dsd[split].num_rows
    data_fingerprint = hashlib.sha256(f"{tokenized.fingerprint}/{split}".encode()).hexdigest()[:16]
    kind = kind_for(tokenized.facts.task)
    cfg = for_kind(cfg, kind.task)  # a batch job given the shared settings: the kind's defaults for the rest
    device, dtype = device_and_dtype(cfg.precision)  # int8 is torch.qint8: its own shard ids

    total = -(-n // cfg.shard_size)
    table = dsd[split].with_format("arrow")[:]  # memory-mapped: hashing a shard's rows reads them, nothing more
    shards = []
    for i in part_bounds(total, part, parts):
        start = i * cfg.shard_size
        rows = min(cfg.shard_size, n - start)
        # A shard is named by its own input rows, the model and the settings that change outputs, so an unchanged
        # shard of a new revision of the data (rows appended, or edited in another shard) is found again. Batch size
        # and max_tokens_per_batch are left out: with attention masks they change padding, not results; the kind
        # names the settings that do change them (a causal LM's generation settings).
        key = [FORMAT, model_fingerprint, _digest(table.slice(start, rows)), str(dtype), kind.output_settings(cfg)]
        sid = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
        shards.append({"index": i, "id": sid, "file": f"shard-{i:05d}-{sid}.parquet", "start": start, "rows": rows})

    existing = store.ls(out_uri)  # one listing, not a request per shard
    existing |= _adopt(out_uri, [s["file"] for s in shards if s["file"] not in existing])
    reused = [s for s in shards if s["file"] in existing]
    reused_rows = sum(s["rows"] for s in reused)
    if reused:
        log.info("reused %d of %d prediction shards (%d rows) from an earlier run",
                 len(reused), len(shards), reused_rows)
    started, part_rows, rows_done = time.perf_counter(), sum(s["rows"] for s in shards), reused_rows
    predictor = None  # loaded on the first shard that needs it: a finished rerun never loads the model
    for done, shard in enumerate(shards):
        if shard["file"] not in existing:
            predictor = predictor or kind.load_predictor(_fetch(model_uri, model_fingerprint), device, dtype)
            rows = kind.predict_shard(predictor, table.slice(shard["start"], shard["rows"]), cfg, shard["index"])
            store.write_parquet(store.join(out_uri, shard["file"]), rows)  # absent or complete, never half
            rows_done += shard["rows"]
        if on_progress:
            seconds = time.perf_counter() - started
            rate = f", {(rows_done - reused_rows) / seconds:.1f} rows/s" if rows_done > reused_rows and seconds else ""
            on_progress((done + 1) / len(shards),
                        f"shard {done + 1}/{len(shards)} ({rows_done}/{part_rows} rows{rate})")

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
        "facts": tokenized.facts.model_dump(mode="json"),
        "software": software.installed(),  # what made these rows: the Space is pinned to it (stages/space.py)
        "part": part,
        "parts": parts,
        "shards": shards,
    }
    manifest_uri = store.join(out_uri, "parts", f"part-{part:03d}-of-{parts:03d}.json")
    store.write_json(manifest_uri, manifest)
    return PredictionsPart(uri=store.join(out_uri), manifest_uri=manifest_uri, part=part, parts=parts,
                           rows=part_rows, shards=len(shards))


def merge_parts(parts: list[PredictionsPart]) -> PredictionsRef:
    """The parts' manifests -> one `manifest.json` and its ref, after checking that the parts are all of one job and
    cover every input row exactly once, in order, with every shard file present."""
    if not parts:
        raise ValueError("no prediction parts to merge")
    uri, count = parts[0].uri, parts[0].parts
    if {p.uri for p in parts} != {uri} or sorted(p.part for p in parts) != list(range(count)) or any(
            p.parts != count for p in parts):
        raise ValueError(f"prediction parts {[(p.uri, p.part, p.parts) for p in parts]} are not parts 0..{count - 1} "
                         f"of one job")
    manifests = [store.read_json(p.manifest_uri) for p in sorted(parts, key=lambda p: p.part)]
    same = ("format", "model_fingerprint", "data_fingerprint", "split", "rows", "shard_size", "dtype")
    first = manifests[0]
    for m in manifests[1:]:
        if (diff := [k for k in same if m[k] != first[k]]):
            raise ValueError(f"prediction parts of {uri} disagree on {', '.join(diff)} (part {m['part']} vs part 0)")
    shards = [s for m in manifests for s in m["shards"]]
    expected_start = 0
    for i, shard in enumerate(shards):  # contiguous and complete: rows out == rows in, in order, no duplicates
        if shard["index"] != i or shard["start"] != expected_start:
            raise ValueError(f"{uri}: shard {shard['index']} (row {shard['start']}) where shard {i} (row "
                             f"{expected_start}) belongs")
        expected_start += shard["rows"]
    if expected_start != first["rows"]:
        raise ValueError(f"{uri}: the parts cover {expected_start} of {first['rows']} rows")
    present = store.ls(uri)
    if (missing := [s["file"] for s in shards if s["file"] not in present]):
        raise ValueError(f"{uri}: {len(missing)} shard files are missing, e.g. {missing[0]}")
    manifest = {k: v for k, v in first.items() if k not in ("part", "parts")}
    manifest.update(shards=shards, parts=len(manifests))
    store.write_json(store.join(uri, "manifest.json"), manifest)
    return PredictionsRef(uri=uri, rows=first["rows"], shards=len(shards),
                          model_fingerprint=first["model_fingerprint"], data_fingerprint=first["data_fingerprint"])


def _digest(rows: pa.Table) -> str:
    """sha256 (16 hex) of a slice of input rows: their Arrow IPC bytes (schema and values, whatever the slice's
    offset in its table)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def _adopt(out_uri: str, wanted: list[str]) -> set[str]:
    """Shard files this job needs that another predictions folder of the store already holds (the same rows, model
    and settings: an earlier revision of the data), copied in; returns their names."""
    if not wanted:
        return set()
    stage = out_uri.rstrip("/").rsplit("/", 1)[0]  # {store}/predict: every job's folder
    names = set(wanted)
    found = {}
    for path in store.find(stage):
        name = path.rsplit("/", 1)[-1]
        if name in names and name not in found:
            found[name] = store.join(stage, path)
    for name, uri in found.items():
        store.write_parquet(store.join(out_uri, name), store.read_parquet(uri))
    return set(found)


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
