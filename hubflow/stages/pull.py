"""Pull the data: a Hub dataset at its sha, or a folder of files on S3 or disk -> checked raw parquet splits.

    load_raw_files(source, data, kind, out_uri)          s3:// or local folder of parquet/csv/jsonl -> RawDataRef
    write_raw_splits(dsdict, data, kind, out_uri, ...)   an already loaded DatasetDict (the Hub pull) -> RawDataRef
    load_files_split(source, split)                      one split of a folder of files -> Dataset (batch inference)

The task kind names the columns to keep (`kind.raw_columns`) and checks their content (`kind.check_raw`) before
anything is written, so bad data fails here, before any expensive stage.
"""

from __future__ import annotations

import io
import logging
import posixpath

from ..config import DataConfig, DataFormat
from ..doors import store
from ..errors import PreflightError
from ..refs import RawDataRef
from ..tokenize import sha, sha256_bytes

log = logging.getLogger("hubflow")
_FORMATS = {".parquet": DataFormat.parquet, ".csv": DataFormat.csv, ".tsv": DataFormat.tsv, ".tab": DataFormat.tsv,
            ".jsonl": DataFormat.json, ".json": DataFormat.json, ".arrow": DataFormat.arrow}
# The `datasets` builder and its options for each format.
_BUILDERS = {DataFormat.parquet: ("parquet", {}), DataFormat.csv: ("csv", {}), DataFormat.tsv: ("csv", {"sep": "\t"}),
             DataFormat.json: ("json", {}), DataFormat.arrow: ("arrow", {})}


def load_raw_files(source: str, cfg: DataConfig, kind, out_uri: str) -> RawDataRef:
    """Folder of `{split}.*`, `{split}-*`, `{split}_*` or `data/{split}-*.parquet` files → parquet splits at out_uri.

    Formats: parquet, csv, tsv, jsonl/json, arrow (one per split), by extension or `data.format`. Only the splits
    named in cfg are read.
    """
    from datasets import DatasetDict

    files = _discover(source, _wanted_splits(cfg), cfg.format)
    if cfg.train_split not in files:
        raise ValueError(_nothing_found(source, cfg.train_split, files, cfg.format, "data.train_split"))
    loaded = DatasetDict()
    for split in (s for s in _wanted_splits(cfg) if s in files):  # train first, as the data line lists them
        loaded[split] = _load(source, split, *files[split], _setting(cfg, split))
    return write_raw_splits(loaded, cfg, kind, out_uri, source=source, source_sha=None)


def write_raw_splits(dsdict, cfg: DataConfig, kind, out_uri: str, source: str, source_sha: str | None) -> RawDataRef:
    """DatasetDict -> checked, sample-limited `{out_uri}/{split}.parquet` (the kind's columns) and its RawDataRef,
    whose `splits` lists the train split first. The fingerprint hashes the written bytes, not the source's name.

    Raises ValueError naming the split and column for a missing train split, missing columns or an empty split, and
    whatever the kind's own checks find (for classifiers: missing values, unusable or single-class labels), before
    anything is written.
    """
    if cfg.train_split not in dsdict:
        raise ValueError(f"train split {cfg.train_split!r} (data.train_split) not in {source}; available splits: "
                         f"{sorted(dsdict)}")
    log.info("data %s%s: %s", source, f"@{source_sha[:10]}" if source_sha else "", describe(dsdict))
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
            raise PreflightError(f"split {name!r} ({_setting(cfg, name)}) of {source} is empty")
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


def load_files_split(source: str, split: str, fmt: DataFormat | None = None, setting: str = "data.test_split"):
    """One split of an s3:// or local folder of files (found as `load_raw_files` finds them) → a Dataset;
    `setting` is the config key that named the split, for the error a missing or empty split gets."""
    found = _discover(source, [split], fmt)
    if split not in found:
        raise ValueError(_nothing_found(source, split, found, fmt, setting))
    return _load(source, split, *found[split], setting)


def describe(dsdict) -> str:
    """`train: 2000 rows, validation: 200 rows; columns text (string), label (ClassLabel)` for the preflight log;
    when the splits' columns differ, each split with its own: `train: 20 rows, columns sentence (string), ...;
    dev: 5 rows, columns content (string), ...` (so the line shows why a column check that follows fails)."""
    columns = {name: ", ".join(f"{col} ({_kind(f)})" for col, f in ds.features.items()) for name, ds in dsdict.items()}
    if len(set(columns.values())) <= 1:
        splits = ", ".join(f"{name}: {len(ds)} rows" for name, ds in dsdict.items())
        return f"{splits}; columns {next(iter(columns.values()), '')}"
    return "; ".join(f"{name}: {len(ds)} rows, columns {columns[name]}" for name, ds in dsdict.items())


def _kind(feature) -> str:
    names = getattr(feature, "names", None)
    if names is not None:
        return f"ClassLabel, {len(names)} classes"
    return getattr(feature, "dtype", None) or type(feature).__name__


# ----- helpers -------------------------------------------------------------------------------------------------------


def _wanted_splits(cfg: DataConfig) -> list[str]:
    return list(dict.fromkeys(s for s in (cfg.train_split, cfg.validation_split, cfg.test_split) if s))


def _setting(cfg: DataConfig, split: str) -> str:
    """The config key that names `split` (`data.test_split`, ...), for messages."""
    keys = {cfg.train_split: "data.train_split", cfg.validation_split: "data.validation_split",
            cfg.test_split: "data.test_split"}
    return keys.get(split, "data.test_split")


def _load(source: str, split: str, fmt: DataFormat, paths: list[str], setting: str):
    from datasets.exceptions import DatasetGenerationError

    builder, options = _BUILDERS[fmt]
    uris = [store.join(source, p) for p in paths]
    try:
        return store.load_files(builder, split, uris, **options)
    except (ValueError, StopIteration, DatasetGenerationError):
        # datasets cannot build a split from files without rows, and says so in its own terms ("Instruction 'test'
        # corresponds to no data!", "An error occurred while generating the dataset", a bare StopIteration for
        # json): when that is the cause, name the split, the setting and the files instead.
        if any(_holds_rows(uri, fmt) for uri in uris):
            raise
        raise PreflightError(f"split {split!r} ({setting}) is empty: {', '.join(uris)} "
                             f"{'holds' if len(uris) == 1 else 'hold'} no rows") from None


def _holds_rows(uri: str, fmt: DataFormat) -> bool:
    """Does this file hold at least one row? True when it cannot tell (then datasets' own error stands). Read only
    after datasets failed, so a healthy run pays nothing for it."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = store.read_bytes(uri)
    try:
        if fmt is DataFormat.parquet:
            return pq.ParquetFile(io.BytesIO(data)).metadata.num_rows > 0
        if fmt is DataFormat.arrow:
            return pa.ipc.open_stream(data).read_all().num_rows > 0
    except (pa.ArrowException, OSError):
        return True
    text = data.decode("utf-8", errors="replace").strip()
    if fmt in (DataFormat.csv, DataFormat.tsv):  # a header line and nothing else is no row
        return len([line for line in text.splitlines() if line.strip()]) > 1
    if text.startswith("["):  # a JSON array; anything else non-blank is JSON lines
        try:
            return bool(json.loads(text))
        except ValueError:
            return True
    return bool(text)


def _nothing_found(source: str, split: str, found: dict, fmt: DataFormat | None, setting: str) -> str:
    """What was under the folder, and what is read: the one line a user needs to fix the source or the config."""
    files = [r for r in store.find(source) if not any(p.startswith(".") for p in r.split("/"))]
    extensions = sorted({posixpath.splitext(r)[1].lower() or "(none)" for r in files})
    readable = "data.format=" + fmt.value if fmt else "parquet, csv, tsv, jsonl/json and arrow files"
    return (f"no files for split {split!r} ({setting}) under {source} (read: {readable}); found {len(files)} files "
            f"(extensions {', '.join(extensions) or 'none'}) and splits {sorted(found)}; name files after the split "
            "(train.csv, train-0000.parquet, train/…) and set data.format for other extensions")


def _discover(source: str, splits: list[str],
              forced: DataFormat | None = None) -> dict[str, tuple[DataFormat, list[str]]]:
    """Folder → {split: (format, [relative paths])}, by file name or folder name; `forced` reads every file so."""
    if not store.is_dir(source):
        raise ValueError(f"data source {source} is not a folder")
    found: dict[str, tuple[DataFormat, list[str]]] = {}
    for rel in store.find(source):
        fmt = forced or _FORMATS.get(posixpath.splitext(rel)[1].lower())
        if fmt is None or any(part.startswith(".") for part in rel.split("/")):
            continue
        split = _split_of(rel, splits)
        if split is None:
            continue
        prev_fmt, paths = found.setdefault(split, (fmt, []))
        if prev_fmt != fmt:
            raise ValueError(f"split {split!r} mixes {prev_fmt.value} and {fmt.value} files under {source}: "
                             f"{paths + [rel]}")
        paths.append(rel)
    return found


def _split_of(rel: str, splits: list[str]) -> str | None:
    """`train.csv`, `train-0001.parquet`, `train_a.jsonl`, `data/train-*.parquet`, `train/x.csv` → `train`."""
    *dirs, name = rel.split("/")
    stem = name.split(".")[0]
    matches = [s for s in splits if stem == s or stem.startswith((f"{s}-", f"{s}_")) or s in dirs]
    return max(matches, key=len) if matches else None  # `train_extra` beats `train` when both are split names
