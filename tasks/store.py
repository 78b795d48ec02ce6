"""The artifact store: the one door to fsspec. A local folder by default, `s3://bucket/prefix` on a cluster.

Every stage writes under the store URI and passes URIs on, so no stage assumes another worker's local disk.
S3 credentials and endpoint come from the environment (AWS_* variables, `AWS_ENDPOINT_URL_S3`), never parameters.
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from typing import Any

import fsspec


def _normalise(uri: str) -> str:
    if "://" in uri:
        return uri.rstrip("/")
    return str(Path(uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    """`join("s3://b/p", "a", "b") == "s3://b/p/a/b"`; local paths come back absolute."""
    return posixpath.join(_normalise(uri), *parts)


def fs_for(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the in-filesystem path for a URI."""
    fs, path = fsspec.core.url_to_fs(_normalise(uri), **storage_options(uri))
    return fs, path


def storage_options(uri: str) -> dict[str, Any]:
    """Options for `datasets`/fsspec calls: the S3 endpoint from the environment, nothing for local paths."""
    if not uri.startswith("s3://"):
        return {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols


def exists(uri: str) -> bool:
    fs, path = fs_for(uri)
    return fs.exists(path)


def write_json(uri: str, obj: Any) -> str:
    """Write JSON atomically where the filesystem allows (local: temp file + rename; S3 PUTs are atomic)."""
    fs, path = fs_for(uri)
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    if _is_local(fs):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        Path(tmp).write_bytes(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)
    return uri


def read_json(uri: str) -> Any:
    fs, path = fs_for(uri)
    with fs.open(path, "rb") as f:
        return json.load(f)


def put_dir(local_dir: str | Path, uri: str) -> str:
    """Copy a local folder's files to `uri` (created as needed)."""
    fs, path = fs_for(uri)
    local_dir = Path(local_dir)
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        dest = posixpath.join(path, file.relative_to(local_dir).as_posix())
        fs.makedirs(posixpath.dirname(dest), exist_ok=True)
        fs.put_file(str(file), dest)
    return uri


def get_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy the files under `uri` into `local_dir`; for a local store this is the folder itself, no copy."""
    fs, path = fs_for(uri)
    if _is_local(fs):
        return Path(path)
    local_dir = Path(local_dir)
    for src in fs.find(path):
        dest = local_dir / posixpath.relpath(src, path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(src, str(dest))
    return local_dir


def remove(uri: str) -> None:
    fs, path = fs_for(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)
