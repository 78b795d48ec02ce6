"""The artifact store: the one door to fsspec. A local folder by default, `s3://bucket/prefix` on a cluster.

Every stage writes under the store URI and passes URIs on, so no stage assumes another worker's local disk.
S3 credentials and endpoint come from the environment (AWS_* variables, `AWS_ENDPOINT_URL_S3`), never parameters.
Writes are atomic where it matters: a file is absent or complete (local: temp file + rename; an S3 PUT is atomic),
and so is a saved DatasetDict (local: temp folder + rename; S3: its `dataset_dict.json` marker written last).
`datasets` reaches the store only through this module: save_dataset / load_dataset / has_dataset, and load_files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import fsspec


def _normalise(uri: str) -> str:
    if "://" in uri:
        return uri.rstrip("/")
    return str(Path(uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    """`join("s3://b/p", "a", "b") == "s3://b/p/a/b"`; local paths come back absolute."""
    return posixpath.join(_normalise(uri), *parts)


# The file that makes a folder a DatasetDict to `load_from_disk` (datasets.config.DATASETDICT_JSON_FILENAME).
DATASET_MARKER = "dataset_dict.json"


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(_normalise(uri), **storage_options(uri))


def storage_options(uri: str) -> dict[str, Any]:
    """fsspec options for `uri`: the S3 endpoint from the environment, nothing for local paths."""
    if not uri.startswith("s3://"):
        return {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def is_dir(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.isdir(path)


def ls(uri: str) -> set[str]:
    """Names directly under `uri` (one listing); empty when it does not exist (object stores have no empty folders)."""
    fs, path = _fs(uri)
    try:
        return {posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)}
    except FileNotFoundError:
        return set()


def find(uri: str) -> list[str]:
    """Every file under `uri`, as paths relative to it, sorted."""
    fs, root = _fs(uri)
    return sorted(posixpath.relpath(p, root) for p in fs.find(root))


def write_bytes(uri: str, data: bytes) -> str:
    """Write `data` atomically (readers see the old file, or none, until the new one is complete)."""
    fs, path = _fs(uri)
    if is_local(uri):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        Path(tmp).write_bytes(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)
    return uri


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    return fs.cat_file(path)


def write_json(uri: str, obj: Any) -> str:
    return write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_parquet(uri: str, table) -> str:
    """A pyarrow table as one parquet file, atomically."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return write_bytes(uri, buf.getvalue())


def read_parquet(uri: str, columns: list[str] | None = None):
    """One parquet file -> a pyarrow table (optionally only `columns`)."""
    import pyarrow.parquet as pq

    fs, path = _fs(uri)
    with fs.open(path, "rb") as f:
        # use_threads=False: threaded reads through a Python file object can abort the interpreter at exit
        # (apache/arrow#50482); stage files are small enough for one thread.
        return pq.read_table(f, columns=columns, use_threads=False)


def sha256_file(path: str | Path) -> str:
    """sha256 of a local file, read in 16 MiB chunks."""
    return sha256_files([path])


def sha256_files(paths: Iterable[str | Path]) -> str:
    """One sha256 over the bytes of several local files, in the given order."""
    h = hashlib.sha256()
    for file in paths:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def put_dir(local_dir: str | Path, uri: str) -> str:
    """Copy a local folder's files to `uri` (created as needed)."""
    fs, path = _fs(uri)
    local_dir = Path(local_dir)
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        dest = posixpath.join(path, file.relative_to(local_dir).as_posix())
        fs.makedirs(posixpath.dirname(dest), exist_ok=True)
        fs.put_file(str(file), dest)
    return uri


def get_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy the files under `uri` into `local_dir`; for a local store this is the folder itself, no copy."""
    fs, path = _fs(uri)
    if is_local(uri):
        return Path(path)
    local_dir = Path(local_dir)
    for src in fs.find(path):
        dest = local_dir / posixpath.relpath(src, path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(src, str(dest))
    return local_dir


def get_file(uri: str, local_dir: str | Path) -> Path:
    """Download one file into the local folder `local_dir`; -> its local path."""
    fs, path = _fs(uri)
    local = Path(local_dir, posixpath.basename(path))
    fs.get_file(path, str(local))
    return local


def remove(uri: str) -> None:
    fs, path = _fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _entries(uri: str) -> list[dict]:
    """fsspec's info of every file under `uri` (or of `uri` itself when it is a file)."""
    fs, path = _fs(uri)
    if not fs.exists(path):
        return []
    if fs.isfile(path):
        return [fs.info(path)]
    return list(fs.find(path, detail=True).values())


def modified(uri: str) -> float:
    """When anything under `uri` was last written (Unix time; 0 when nothing is there)."""
    times = []
    for info in _entries(uri):
        stamp = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or 0
        times.append(stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp))
    return max(times, default=0.0)


def size(uri: str) -> int:
    """Bytes of every file under `uri`."""
    return sum(int(info.get("size") or 0) for info in _entries(uri))


# ----- datasets: the DatasetDicts that stages hand on (tokenized splits), saved in `save_to_disk`'s layout ----------

def save_dataset(dsd, uri: str) -> str:
    """A `datasets.DatasetDict` -> `save_to_disk`'s folder at `uri`, replacing whatever was there, atomically: readers
    (and `has_dataset`) see the old folder or none until the new one is complete, never a half-written one.

    Local: saved into a hidden temp sibling, then renamed into place (the old folder is renamed aside first and
    removed after, so it too disappears at once). S3 has no rename: the old marker goes first, then the old objects,
    then each split, and the marker last (`save_to_disk` itself writes it first, so a crash would leave a folder that
    looks complete). The files are the same either way.
    """
    fs, path = _fs(uri)
    if is_local(uri):
        parent, name = os.path.split(path)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
        try:
            dsd.save_to_disk(tmp)
            _move_into_place(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already unless the save failed
        return uri
    marker = posixpath.join(path, DATASET_MARKER)
    if fs.exists(marker):
        fs.rm_file(marker)
    remove(uri)  # no stale shards from an earlier save with another shard count
    for split, ds in dsd.items():
        ds.save_to_disk(join(uri, split), storage_options=storage_options(uri))
    fs.pipe_file(marker, json.dumps({"splits": list(dsd)}).encode())  # byte for byte what save_to_disk writes
    return uri


def has_dataset(uri: str) -> bool:
    """Is a complete DatasetDict saved at `uri` (by `save_dataset`)?"""
    return exists(join(uri, DATASET_MARKER))


def load_dataset(uri: str):
    """The DatasetDict saved at `uri` (memory-mapped when local; an S3 copy is downloaded by `datasets`)."""
    from datasets import load_from_disk

    return load_from_disk(uri, storage_options=storage_options(uri))


def load_files(builder: str, split: str, uris: list[str], **options):
    """Data files in the store or a source folder (parquet, csv, json, arrow: `builder`) -> one `datasets.Dataset`
    named `split`. `options` go to the builder (e.g. `sep` for tsv)."""
    from datasets import load_dataset as build

    return build(builder, data_files={split: uris}, split=split,
                 storage_options=storage_options(uris[0]) if uris else {}, **options)


def _move_into_place(tmp: str, path: str, tries: int = 3) -> None:
    """Rename the folder `tmp` to `path`; a folder already there is renamed aside first and removed after. A rename
    onto a folder that a concurrent writer put there in between fails: move that one aside too and try again."""
    parent, name = os.path.split(path)
    for attempt in range(tries):
        old = None
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=parent)
            try:
                os.replace(path, posixpath.join(old, name))
            except FileNotFoundError:  # another writer moved it first
                pass
        try:
            os.replace(tmp, path)
            return
        except OSError:
            if attempt == tries - 1 or not os.path.lexists(path):
                raise
        finally:
            if old:
                shutil.rmtree(old, ignore_errors=True)
