"""Data stages as plain functions: raw splits → parquet in the store → tokenized train/validation/test.

    load_raw_files(source, cfg, out_uri)       s3:// or local folder of parquet/csv/jsonl → RawDataRef
    write_raw_splits(dsdict, cfg, out_uri, …)  an already loaded DatasetDict (the Hub pull) → RawDataRef
    label_names_of(raw)                        RawDataRef → class names, index = label id
    preprocess(raw, model_dir, cfg, data_cfg, out_uri) → TokenizedRef;  load_tokenized(ref) → DatasetDict
    load_files_split(source, split)            one split of a folder of files → Dataset (batch inference)
    tokenize_for_inference(ds, …, out_root)    one split of texts, labels ignored → TokenizedRef

Raw splits keep their source names (`{out_uri}/{split}.parquet`); `preprocess` maps them onto `train`, `validation`
and `test`, carving the missing ones from train. Label work is done on whole Arrow columns, never per row.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks import store
from tasks.config import DataConfig, PreprocessConfig
from tasks.refs import RawDataRef, TokenizedRef

_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
_TOKENIZER_FILE_PREFIXES = ("tokenizer", "vocab", "merges", "special_tokens", "added_tokens", "spiece", "sentencepiece")
_PREPROCESS_VERSION = 1  # bump when `preprocess` changes its output, so old fingerprints stop matching


def load_raw_files(source: str, cfg: DataConfig, out_uri: str) -> RawDataRef:
    """Folder of `{split}.*`, `{split}-*`, `{split}_*` or `data/{split}-*.parquet` files → parquet splits at out_uri.

    Formats: parquet, csv, jsonl/json (one format per split). Only the splits named in cfg are read.
    """
    from datasets import DatasetDict, load_dataset

    files = _discover(source, _wanted_splits(cfg))
    if cfg.train_split not in files:
        raise ValueError(f"no files for train split {cfg.train_split!r} under {source}; found splits {sorted(files)}")
    by_format: dict[str, dict[str, list[str]]] = {}
    for split, (fmt, paths) in files.items():
        by_format.setdefault(fmt, {})[split] = [store.join(source, p) for p in paths]
    loaded = DatasetDict()
    for fmt, data_files in by_format.items():
        loaded.update(load_dataset(fmt, data_files=data_files, storage_options=store.storage_options(source)))
    return write_raw_splits(loaded, cfg, out_uri, source=source, source_sha=None)


def write_raw_splits(dsdict, cfg: DataConfig, out_uri: str, source: str, source_sha: str | None) -> RawDataRef:
    """DatasetDict → checked, sample-limited `{out_uri}/{split}.parquet` (text + label columns) and its RawDataRef,
    whose `splits` lists the train split first. The fingerprint hashes the written bytes, not the source's name.

    Raises ValueError naming the split and column for a missing train split, missing columns, an empty split,
    missing values, unusable label types or single-class labels, before anything is written.
    """
    if cfg.train_split not in dsdict:
        raise ValueError(f"train split {cfg.train_split!r} not in {source}; available splits: {sorted(dsdict)}")
    limits = {cfg.test_split: cfg.max_test_samples, cfg.validation_split: cfg.max_eval_samples,
              cfg.train_split: cfg.max_train_samples}
    splits = {}
    for name in _wanted_splits(cfg):
        if name not in dsdict:
            continue  # preprocess carves a missing validation/test split from train
        ds = dsdict[name]
        for role, col in (("text", cfg.text_column), ("label", cfg.label_column)):
            if col not in ds.column_names:
                raise ValueError(
                    f"{role} column {col!r} not found in split {name!r}; available columns: {ds.column_names}"
                )
        if len(ds) == 0:
            raise ValueError(f"split {name!r} of {source} is empty")
        if limits.get(name):
            ds = ds.select(range(min(limits[name], len(ds))))  # the first N rows: deterministic, cheap, contiguous
        splits[name] = ds.select_columns([cfg.text_column, cfg.label_column])
    columns = {s: _arrow_columns(ds, cfg) for s, ds in splits.items()}
    _check_text(columns, cfg.text_column)
    _label_space({s: labels for s, (_, labels) in columns.items()},
                 {s: ds.features[cfg.label_column] for s, ds in splits.items()}, cfg.label_column, cfg.train_split)

    digests = {}
    for name, ds in splits.items():
        buf = io.BytesIO()
        ds.to_parquet(buf)  # keeps the features (ClassLabel names) in the parquet schema metadata
        data = buf.getvalue()
        digests[name] = hashlib.sha256(data).hexdigest()
        fs, path = store.fs_for(store.join(out_uri, f"{name}.parquet"))
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.pipe_file(path, data)
    fingerprint = _sha({"parquet": digests, "columns": [cfg.text_column, cfg.label_column]})
    return RawDataRef(uri=store.join(out_uri), fingerprint=fingerprint, splits={s: len(d) for s, d in splits.items()},
                      text_column=cfg.text_column, label_column=cfg.label_column, source=source, source_sha=source_sha)


def label_names_of(raw: RawDataRef) -> list[str]:
    """RawDataRef → class names (ClassLabel names, else sorted unique values as strings); index = label id."""
    tables, features = _read_raw(raw)
    train = next(iter(raw.splits))  # write_raw_splits lists the train split first
    return _label_space({s: t.column(raw.label_column) for s, t in tables.items()},
                        {s: f[raw.label_column] for s, f in features.items()}, raw.label_column, train)[0]


def preprocess(
    raw: RawDataRef, model_dir: str, cfg: PreprocessConfig, data_cfg: DataConfig, out_uri: str
) -> TokenizedRef:
    """Raw parquet splits + a fast tokenizer → `save_to_disk` DatasetDict (train/validation/test) at out_uri.

    Columns: input_ids, attention_mask (truncated to cfg.max_length, unpadded), labels (int), row_id (row index in
    its split) and text. Missing validation/test splits are carved from train, stratified, seeded by split_seed.
    """
    from datasets import Dataset, DatasetDict
    from datasets.table import InMemoryTable
    from transformers import AutoTokenizer

    fingerprint = _sha({"v": _PREPROCESS_VERSION, "raw": raw.fingerprint, "tokenizer": _tokenizer_hash(model_dir),
                        "preprocess": cfg.model_dump(mode="json"),
                        "splits": [data_cfg.train_split, data_cfg.validation_split, data_cfg.test_split]})
    tables, features = _read_raw(raw)
    if data_cfg.train_split not in tables:
        raise ValueError(f"train split {data_cfg.train_split!r} not among the raw splits {sorted(tables)} at {raw.uri}")
    label_cols = {s: t.column(raw.label_column) for s, t in tables.items()}
    names, values = _label_space(label_cols, {s: f[raw.label_column] for s, f in features.items()},
                                 raw.label_column, data_cfg.train_split)
    ids = {s: _label_ids(col, values) for s, col in label_cols.items()}
    texts = {s: t.column(raw.text_column) for s, t in tables.items()}

    roles = {"validation": data_cfg.validation_split, "test": data_cfg.test_split}
    present = {role: s for role, s in roles.items() if s is not None and s in tables}
    fractions = {role: getattr(cfg, f"{role}_fraction") for role in roles if role not in present}
    train_ids, train_text = ids[data_cfg.train_split], texts[data_cfg.train_split]
    parts = {role: (texts[s], ids[s]) for role, s in present.items()}
    for role, idx in _carve(train_ids, fractions, cfg.split_seed).items():
        parts[role] = (train_text.take(pa.array(idx)), train_ids[idx])

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.is_fast:
        raise ValueError(f"{model_dir} has no fast tokenizer (tokenizer.json); preprocess needs one for batched speed")

    encode = _arrow_encoder(tokenizer, cfg.max_length, probe=parts["train"][0][:32].to_pylist())
    out = DatasetDict()
    for role in ("train", "validation", "test"):
        text, labels = parts[role]
        table = pa.table({"text": text, "labels": pa.array(labels, pa.int64()),
                          "row_id": pa.array(np.arange(len(labels)), pa.int64())})
        ds = Dataset(InMemoryTable(table), fingerprint=_sha([fingerprint, role])[:16])
        # Batches arrive and leave as Arrow tables; new_fingerprint spares datasets from dill-hashing the tokenizer
        # (slower than tokenizing a few thousand rows), and ours already covers the tokenizer and the config.
        out[role] = ds.with_format("arrow").map(
            encode, batched=True, batch_size=4096, writer_batch_size=4096,
            new_fingerprint=_sha([fingerprint, role, "tokenized"])[:16], desc=f"tokenize {role}",
        ).with_format(None)

    uri = store.join(out_uri)
    store.remove(uri)  # no stale shards from an earlier run with another shard count
    out.save_to_disk(uri, storage_options=store.storage_options(uri))
    return TokenizedRef(uri=uri, fingerprint=fingerprint, splits={s: len(d) for s, d in out.items()}, label_names=names)


def load_tokenized(ref: TokenizedRef):
    """TokenizedRef → the DatasetDict saved by `preprocess`."""
    from datasets import load_from_disk

    return load_from_disk(ref.uri, storage_options=store.storage_options(ref.uri))


def load_files_split(source: str, split: str):
    """One split of an s3:// or local folder of files (found as `load_raw_files` finds them) → a Dataset."""
    from datasets import load_dataset

    found = _discover(source, [split])
    if split not in found:
        raise ValueError(f"no files for split {split!r} under {source}")
    fmt, paths = found[split]
    return load_dataset(fmt, data_files={split: [store.join(source, p) for p in paths]}, split=split,
                        storage_options=store.storage_options(source))


def tokenize_for_inference(
    ds, text_column: str, split: str, model_dir: str, label_names: list[str], max_length: int, out_root: str,
    max_samples: int | None = None,
) -> TokenizedRef:
    """One split of texts + the model's fast tokenizer → a one-split DatasetDict at `{out_root}/{fingerprint}`.

    Columns: input_ids, attention_mask, row_id, text (no labels: a label column, if any, is ignored). The fingerprint
    hashes the texts themselves, the tokenizer and max_length, so the same inputs are tokenized once and reused.
    """
    from datasets import Dataset, DatasetDict
    from datasets.table import InMemoryTable
    from transformers import AutoTokenizer

    if text_column not in ds.column_names:
        raise ValueError(f"text column {text_column!r} not found in split {split!r}; available columns: {ds.column_names}")
    if len(ds) == 0:
        raise ValueError(f"split {split!r} is empty")
    if max_samples:
        ds = ds.select(range(min(max_samples, len(ds))))
    text = ds.with_format("arrow")[:].column(text_column)
    _check_text({split: (text, None)}, text_column)
    text = text.cast(pa.large_string())
    digest = hashlib.sha256()
    with pa.ipc.new_stream(_HashSink(digest), pa.schema([("text", pa.large_string())])) as writer:
        # One contiguous batch (IPC bytes depend on chunking); IPC rebases sliced offsets: equal texts, equal bytes.
        writer.write_table(pa.table({"text": text.combine_chunks()}))
    fingerprint = _sha({"v": _PREPROCESS_VERSION, "kind": "inference", "texts": digest.hexdigest(),
                        "tokenizer": _tokenizer_hash(model_dir), "max_length": max_length, "split": split})
    uri = store.join(out_root, fingerprint[:24])
    ref = TokenizedRef(uri=uri, fingerprint=fingerprint, splits={split: len(text)}, label_names=label_names)
    if store.exists(store.join(uri, "dataset_dict.json")):  # written last by save_to_disk
        return ref

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.is_fast:
        raise ValueError(f"{model_dir} has no fast tokenizer (tokenizer.json); batch inference needs one")
    encode = _arrow_encoder(tokenizer, max_length, probe=text[:32].to_pylist())
    table = pa.table({"text": text, "row_id": pa.array(np.arange(len(text)), pa.int64())})
    dataset = Dataset(InMemoryTable(table), fingerprint=_sha([fingerprint, "raw"])[:16])
    out = DatasetDict({split: dataset.with_format("arrow").map(
        encode, batched=True, batch_size=4096, writer_batch_size=4096, new_fingerprint=fingerprint[:16],
        desc=f"tokenize {split}",
    ).with_format(None)})
    store.remove(uri)
    out.save_to_disk(uri, storage_options=store.storage_options(uri))
    return ref


class _HashSink:
    """A write-only file object that feeds a hash, so hashing a column never holds a second copy of it."""

    def __init__(self, digest):
        self.digest, self.closed = digest, False

    def write(self, data) -> int:
        self.digest.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


# ----- helpers -------------------------------------------------------------------------------------------------------

def _wanted_splits(cfg: DataConfig) -> list[str]:
    return list(dict.fromkeys(s for s in (cfg.train_split, cfg.validation_split, cfg.test_split) if s))


def _discover(source: str, splits: list[str]) -> dict[str, tuple[str, list[str]]]:
    """Folder → {split: (datasets builder, [relative paths])}, by file name or folder name."""
    fs, root = store.fs_for(source)
    if not fs.isdir(root):
        raise ValueError(f"data source {source} is not a folder")
    found: dict[str, tuple[str, list[str]]] = {}
    for path in sorted(fs.find(root)):
        rel = posixpath.relpath(path, root)
        fmt = _FORMATS.get(posixpath.splitext(rel)[1].lower())
        if fmt is None or any(part.startswith(".") for part in rel.split("/")):
            continue
        split = _split_of(rel, splits)
        if split is None:
            continue
        prev_fmt, paths = found.setdefault(split, (fmt, []))
        if prev_fmt != fmt:
            raise ValueError(f"split {split!r} mixes {prev_fmt} and {fmt} files under {source}: {paths + [rel]}")
        paths.append(rel)
    return found


def _split_of(rel: str, splits: list[str]) -> str | None:
    """`train.csv`, `train-0001.parquet`, `train_a.jsonl`, `data/train-*.parquet`, `train/x.csv` → `train`."""
    *dirs, name = rel.split("/")
    stem = name.split(".")[0]
    matches = [s for s in splits if stem == s or stem.startswith((f"{s}-", f"{s}_")) or s in dirs]
    return max(matches, key=len) if matches else None  # `train_extra` beats `train` when both are split names


def _arrow_columns(ds, cfg: DataConfig) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    # The arrow format honours an indices mapping (a shuffled or selected dataset), `ds.data` would not.
    table = ds.with_format("arrow")[:]
    return table.column(cfg.text_column), table.column(cfg.label_column)


def _check_text(columns: dict, text_column: str) -> None:
    for split, (text, _) in columns.items():
        if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
            raise ValueError(f"text column {text_column!r} of split {split!r} holds {text.type}, not strings")
        if text.null_count:
            raise ValueError(f"text column {text_column!r} of split {split!r} has {text.null_count} missing values")


def _label_space(label_cols: dict, features: dict, column: str, train: str) -> tuple[list[str], pa.Array | None]:
    """{split: label column} → (names, sorted raw values or None for ClassLabel); raises on unusable labels."""
    from datasets import ClassLabel

    for split, col in label_cols.items():
        if len(col) == 0:
            raise ValueError(f"split {split!r} is empty")
        if col.null_count:
            raise ValueError(f"label column {column!r} of split {split!r} has {col.null_count} missing values")
    values = None
    if isinstance(features[train], ClassLabel):
        names = list(features[train].names)
        for split, col in label_cols.items():
            low, high = pc.min_max(col).values()
            if low.as_py() < 0 or high.as_py() >= len(names):  # -1 marks unlabeled rows (GLUE test sets)
                raise ValueError(f"label column {column!r} of split {split!r} has ids outside 0..{len(names) - 1}; "
                                 "if the split is unlabeled, set it to null so it is carved from train")
    else:
        types = {s: c.type for s, c in label_cols.items()}
        if len(set(types.values())) > 1:
            raise ValueError(f"label column {column!r} has different types per split: {types}")
        kind = types[train]
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
                or pa.types.is_boolean(kind)):
            raise ValueError(f"label column {column!r} of split {train!r} holds {kind}; need class names or ids")
        values = pc.unique(pa.chunked_array([v for c in label_cols.values() for v in c.chunks], kind))
        values = values.take(pc.sort_indices(values))
        names = [str(v) for v in values.to_pylist()]
    observed = pc.unique(label_cols[train]).to_pylist()
    if len(names) < 2 or len(observed) < 2:
        raise ValueError(f"single-class labels: label column {column!r} of split {train!r} holds only "
                         f"{observed} ({len(label_cols[train])} rows); a classifier needs at least 2 classes "
                         "(max_train_samples keeps the first rows: a dataset sorted by label needs more)")
    return names, values


def _label_ids(col: pa.ChunkedArray, values: pa.Array | None) -> np.ndarray:
    """Label column → int64 ids: ClassLabel ids as they are, other values by their index in the sorted values."""
    if values is not None:
        col = pc.index_in(col, value_set=values)
    return col.to_numpy().astype(np.int64)


def _arrow_encoder(tokenizer, max_length: int, probe: list[str]):
    """A fast tokenizer → a batch function pa.Table(text) → the same table + input_ids, attention_mask (unpadded).

    It calls the Rust tokenizer directly: `tokenizer(...)` rebuilds a Python dict per row (most of its time on short
    texts). The backend holds the normaliser and special-token template, so ids match `tokenizer(text,
    truncation=True, max_length=max_length)`; a tokenizer that adds Python-side logic fails the check on `probe`
    and is called the ordinary way.
    """
    from itertools import chain

    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: our truncation, the caller's untouched
    backend.enable_truncation(max_length)
    backend.no_padding()  # padding happens per batch in the collator
    encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast skips char offsets

    def rust_ids(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in encode_batch(texts)]

    def python_ids(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False,
                         return_token_type_ids=False)["input_ids"]

    ids_of = rust_ids if rust_ids(probe) == python_ids(probe) else python_ids

    def encode(batch: pa.Table) -> pa.Table:
        ids = ids_of(batch.column("text").to_pylist())
        offsets = np.zeros(len(ids) + 1, np.int32)
        np.cumsum(np.fromiter(map(len, ids), np.int32, len(ids)), out=offsets[1:])
        flat = np.fromiter(chain.from_iterable(ids), np.int32, int(offsets[-1]))
        # int32 ids / int8 mask: the types datasets itself gives these columns
        return batch.append_column("input_ids", pa.ListArray.from_arrays(offsets, flat)).append_column(
            "attention_mask", pa.ListArray.from_arrays(offsets, np.ones(len(flat), np.int8)))

    return encode


def _carve(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Train label ids → {"train": idx, role: idx}: per-class shuffled takes, each split in original row order."""
    if not fractions:
        return {"train": np.arange(len(labels))}
    if len(labels) < len(fractions) + 1:
        raise ValueError(f"train split has {len(labels)} rows, too few to carve {sorted(fractions)} from it")
    rng = np.random.default_rng(seed)
    taken: dict[str, list[np.ndarray]] = {role: [] for role in ["train", *fractions]}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for role, frac in fractions.items():
            k = int(round(frac * len(idx)))
            taken[role].append(idx[start:start + k])
            start += k
        taken["train"].append(idx[start:])
    out = {role: np.sort(np.concatenate(parts)) for role, parts in taken.items()}
    if len(out["train"]) == 0:
        raise ValueError(f"carving {fractions} left no train rows: too few rows per class")
    for role in fractions:  # tiny data: every split gets at least one row
        if len(out[role]) == 0:
            pick = rng.integers(len(out["train"]))
            out[role], out["train"] = out["train"][pick:pick + 1], np.delete(out["train"], pick)
    return out


def _read_raw(raw: RawDataRef) -> tuple[dict[str, pa.Table], dict]:
    from datasets import Features

    tables, features = {}, {}
    for split in raw.splits:
        fs, path = store.fs_for(store.join(raw.uri, f"{split}.parquet"))
        with fs.open(path, "rb") as f:
            # use_threads=False: threaded reads through a Python file object can abort the interpreter at exit
            # (apache/arrow#50482); these files are small enough for one thread.
            table = pq.read_table(f, use_threads=False)
        tables[split], features[split] = table, Features.from_arrow_schema(table.schema)
    return tables, features


def _tokenizer_hash(model_dir: str) -> str:
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file() and p.name.startswith(_TOKENIZER_FILE_PREFIXES))
    if not files:
        raise ValueError(f"no tokenizer files in {model_dir}")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
