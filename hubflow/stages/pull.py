"""Pull the data: a Hub dataset at its sha, or a folder of files on S3 or disk -> checked raw parquet splits.

    load_raw_files(source, data, kind, out_uri)          s3:// or local folder of parquet/csv/jsonl -> RawDataRef
    write_raw_splits(dsdict, data, kind, out_uri, ...)   an already loaded DatasetDict (the Hub pull) -> RawDataRef
    load_files_split(source, split)                      one split of a folder of files -> Dataset (batch inference)

The task kind names the columns to keep (`kind.raw_columns`) and checks their content (`kind.check_raw`) before
anything is written, so bad data fails here, before any expensive stage.
"""

from __future__ import annotations

import io
import posixpath

from ..config import DataConfig
from ..doors import store
from ..refs import RawDataRef
from ..tokenize import sha, sha256_bytes

_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}


def load_raw_files(source: str, cfg: DataConfig, kind, out_uri: str) -> RawDataRef:
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
    return write_raw_splits(loaded, cfg, kind, out_uri, source=source, source_sha=None)


def write_raw_splits(dsdict, cfg: DataConfig, kind, out_uri: str, source: str, source_sha: str | None) -> RawDataRef:
    """DatasetDict -> checked, sample-limited `{out_uri}/{split}.parquet` (the kind's columns) and its RawDataRef,
    whose `splits` lists the train split first. The fingerprint hashes the written bytes, not the source's name.

    Raises ValueError naming the split and column for a missing train split, missing columns or an empty split, and
    whatever the kind's own checks find (for classifiers: missing values, unusable or single-class labels), before
    anything is written.
    """
    if cfg.train_split not in dsdict:
        raise ValueError(f"train split {cfg.train_split!r} not in {source}; available splits: {sorted(dsdict)}")
    roles = kind.raw_columns(cfg, dsdict[cfg.train_split].column_names)
    limits = {cfg.test_split: cfg.max_test_samples, cfg.validation_split: cfg.max_eval_samples,
              cfg.train_split: cfg.max_train_samples}
    splits = {}
    for name in _wanted_splits(cfg):
        if name not in dsdict:
            continue  # preprocess carves a missing validation/test split from train
        ds = dsdict[name]
        for role, col in roles.items():
            if col not in ds.column_names:
                raise ValueError(
                    f"{role} column {col!r} not found in split {name!r}; available columns: {ds.column_names}"
                )
        if len(ds) == 0:
            raise ValueError(f"split {name!r} of {source} is empty")
        if limits.get(name):
            ds = ds.select(range(min(limits[name], len(ds))))  # the first N rows: deterministic, cheap, contiguous
        splits[name] = ds.select_columns(list(dict.fromkeys(roles.values())))
    kind.check_raw(splits, cfg, roles)

    digests = {}
    for name, ds in splits.items():
        buf = io.BytesIO()
        ds.to_parquet(buf)  # keeps the features (ClassLabel names) in the parquet schema metadata
        data = buf.getvalue()
        digests[name] = sha256_bytes(data)
        store.write_bytes(store.join(out_uri, f"{name}.parquet"), data)
    fingerprint = sha({"parquet": digests, "columns": list(roles.values())})
    return RawDataRef(uri=store.join(out_uri), fingerprint=fingerprint, splits={s: len(d) for s, d in splits.items()},
                      columns=roles, source=source, source_sha=source_sha)


def load_files_split(source: str, split: str):
    """One split of an s3:// or local folder of files (found as `load_raw_files` finds them) → a Dataset."""
    from datasets import load_dataset

    found = _discover(source, [split])
    if split not in found:
        raise ValueError(f"no files for split {split!r} under {source}")
    fmt, paths = found[split]
    return load_dataset(fmt, data_files={split: [store.join(source, p) for p in paths]}, split=split,
                        storage_options=store.storage_options(source))


# ----- helpers -------------------------------------------------------------------------------------------------------


def _wanted_splits(cfg: DataConfig) -> list[str]:
    return list(dict.fromkeys(s for s in (cfg.train_split, cfg.validation_split, cfg.test_split) if s))


def _discover(source: str, splits: list[str]) -> dict[str, tuple[str, list[str]]]:
    """Folder → {split: (datasets builder, [relative paths])}, by file name or folder name."""
    if not store.is_dir(source):
        raise ValueError(f"data source {source} is not a folder")
    found: dict[str, tuple[str, list[str]]] = {}
    for rel in store.find(source):
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
