"""Batch encoding: texts (or token ids) -> sentence vectors, over length-sorted batches, in input order.

    Encoder.load(folder, device, dtype)          a sentence-transformers (or plain transformers) folder -> Encoder;
                                                 dtype torch.qint8: fp32 weights, body Linear layers int8 (CPU)
    encoder.encode(texts, batch_size, max_tokens_per_batch)   -> float32 [n, dim], row i = texts[i]
    encoder.encode_ids(input_ids, batch_size, max_tokens)     pyarrow list<int> column -> float32 [n, dim]
    encode_texts(model_dir, texts, ...)          the same through a per-folder cache (the gate, the Space check)

Speed: rows are sorted longest first and cut into batches padded to their own longest row, so padding is small and
an out-of-memory shows on the first batch; every batch's vectors stay on the device until the call ends (one sync).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from .model import Embedder
from .st_format import read_layout


class Encoder:
    """A loaded Embedder plus what batching needs: its tokenizer, pad id, device and truncation length."""

    def __init__(self, embedder: Embedder, tokenizer, device: torch.device, max_length: int):
        self.embedder, self.tokenizer, self.device, self.max_length = embedder, tokenizer, device, max_length
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad or 0)

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> Encoder:
        from transformers import AutoModel, AutoTokenizer

        pooling, normalize, max_seq_length = read_layout(folder)
        int8 = dtype == torch.qint8
        body = AutoModel.from_pretrained(folder, dtype=torch.float32 if int8 else dtype, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        positions = getattr(body.config, "max_position_embeddings", None) or 1 << 62
        # sentence-transformers truncates at max_seq_length, else at the tokenizer's limit: so do we.
        limit = max_seq_length or min(tokenizer.model_max_length, positions)
        embedder = Embedder(body, pooling, normalize, max_length=limit).to(device).eval()
        if int8:
            _quantize(embedder.body)
        return cls(embedder, tokenizer, torch.device(device), limit)

    def tokenize(self, texts: list[str]) -> pa.Array:
        if not texts:  # a fast tokenizer fails on an empty batch
            return pa.array([], pa.list_(pa.int64()))
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, return_attention_mask=False,
                             return_token_type_ids=False)["input_ids"]
        return pa.array(ids, type=pa.list_(pa.int64()))

    def encode(self, texts: list[str], batch_size: int = 64, max_tokens_per_batch: int = 1 << 62) -> np.ndarray:
        """Texts -> float32 vectors [n, dim], row i for texts[i]."""
        return self.encode_ids(self.tokenize(texts), batch_size, max_tokens_per_batch)

    @torch.inference_mode()
    def encode_ids(self, input_ids: pa.Array | pa.ChunkedArray, batch_size: int = 64,
                   max_tokens: int = 1 << 62) -> np.ndarray:
        """Token id lists -> float32 vectors [n, dim] in input order, computed over length-sorted batches of at most
        `batch_size` rows and `max_tokens` padded tokens."""
        if isinstance(input_ids, pa.ChunkedArray):
            input_ids = input_ids.combine_chunks() if input_ids.num_chunks else pa.array([], pa.list_(pa.int64()))
        dim = self.embedder.body.config.hidden_size
        if len(input_ids) == 0:
            return np.zeros((0, dim), np.float32)
        offsets = input_ids.offsets.to_numpy().astype(np.int64)
        offsets -= offsets[0]  # a sliced array's offsets start mid-buffer; flatten() starts at that point
        # One upload per call; the pad id appended at the end is where every padding position points.
        values = np.append(input_ids.flatten().to_numpy(zero_copy_only=False).astype(np.int64), self.pad_id)
        lengths = np.diff(offsets)
        order = np.argsort(-lengths, kind="stable")
        dev = self.device
        flat, pad_at = torch.from_numpy(values).to(dev), len(values) - 1
        starts = torch.from_numpy(offsets[:-1][order]).to(dev)
        lens = torch.from_numpy(lengths[order]).to(dev)
        positions = torch.arange(max(int(lengths.max()), 1), device=dev)
        outputs, i = [], 0
        while i < len(order):
            width = max(int(lengths[order[i]]), 1)  # sorted: a batch's first row is its longest
            size = min(batch_size, max(1, max_tokens // width), len(order) - i)
            mask = positions[:width] < lens[i:i + size, None]
            ids = flat[torch.where(mask, starts[i:i + size, None] + positions[:width], pad_at)]
            outputs.append(self.embedder.embed(ids, mask.long()).float())
            i += size
        vectors = np.empty((len(order), dim), np.float32)
        vectors[order] = torch.cat(outputs).cpu().numpy()  # the one host sync
        return vectors


def _quantize(body: torch.nn.Module) -> None:
    """The body's nn.Linear layers to dynamic int8, in place, with per-channel weight scales: per-tensor scales
    (what hubflow's classifier uses) turn all-MiniLM-L6-v2's vectors by up to 37 degrees on short texts (cosine 0.80
    to fp32), per-channel by up to 29 (0.87); a classifier's argmax shrugs that off, a similarity ranking less so."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        # torch 2.10+ marks torch.ao.quantization deprecated (torchao is not a dependency); it ships and runs in 2.13.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated", category=UserWarning)
        quantize_dynamic(body, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def encode_texts(model_dir: str | Path, texts: list[str], batch_size: int = 64, precision: str = "auto") -> np.ndarray:
    """A few texts through a cached Encoder of `model_dir` (at `precision`, as batch inference would run it)."""
    config = Path(model_dir, "config.json")
    precision = getattr(precision, "value", precision)  # an InferencePrecision member or its value
    return _cached(str(Path(model_dir).resolve()), os.stat(config).st_mtime_ns, precision).encode(texts, batch_size)


@functools.lru_cache(maxsize=2)
def _cached(model_dir: str, _mtime_ns: int, precision: str) -> Encoder:
    # Keyed on the folder and its config's mtime, so a model rewritten in place is reloaded.
    from ...devices import device_and_dtype

    device, dtype = device_and_dtype(precision)
    return Encoder.load(model_dir, device, dtype)
