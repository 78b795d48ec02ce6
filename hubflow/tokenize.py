"""Tokenization shared by every task kind: the fast tokenizer's Rust backend over Arrow batches, and fingerprints.

    arrow_encoder(tokenizer, max_length, probe)   pa.Table(text) -> + input_ids, attention_mask (unpadded)
    tokenizer_hash(model_dir)                      sha256 over the tokenizer files of a model folder
    texts_digest(column)                           sha256 of a string column's content (not its chunking)
    sha(obj)                                       sha256 of a JSON-able object
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

_TOKENIZER_FILE_PREFIXES = ("tokenizer", "vocab", "merges", "special_tokens", "added_tokens", "spiece", "sentencepiece",
                            "chat_template")


def arrow_encoder(tokenizer, max_length: int, probe: list[str]):
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


def tokenizer_hash(model_dir: str) -> str:
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file() and p.name.startswith(_TOKENIZER_FILE_PREFIXES))
    if not files:
        raise ValueError(f"no tokenizer files in {model_dir}")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def texts_digest(text: pa.ChunkedArray | pa.Array) -> str:
    """sha256 of a string column's content: equal texts give equal digests, however the column is chunked."""
    digest = hashlib.sha256()
    text = text.cast(pa.large_string())
    combined = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    with pa.ipc.new_stream(_HashSink(digest), pa.schema([("text", pa.large_string())])) as writer:
        # One contiguous batch (IPC bytes depend on chunking); IPC rebases sliced offsets: equal texts, equal bytes.
        writer.write_table(pa.table({"text": combined}))
    return digest.hexdigest()


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


def sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
def check_text(columns: dict, text_column: str) -> None:
    for split, (text, _) in columns.items():
        if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
            raise ValueError(f"text column {text_column!r} of split {split!r} holds {text.type}, not strings")
        if text.null_count:
            raise ValueError(f"text column {text_column!r} of split {split!r} has {text.null_count} missing values")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_tokenized(ref):
    """TokenizedRef -> the DatasetDict saved under `ref.uri`."""
    from .doors import store

    return store.load_dataset(ref.uri)
