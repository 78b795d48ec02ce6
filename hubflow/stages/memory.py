"""Will this training job fit the worker's device? An estimate made before any weight is loaded.

    bytes = weights + gradients + optimizer state + activations + logits, times 1.2 for the allocator and workspace

    weights      P x 4 bytes (fp32 master weights), or what the kind says (a QLoRA base: 0.5 byte + scales)
    trainable    T = P (full), or what the kind trains (a LoRA run: r x (in + out) per adapted linear layer)
    gradients    T x 4 bytes;  AdamW state  T x 8 bytes (two fp32 moments)
    activations  b x s x h x L x 34 bytes without activation checkpointing (per layer: attention and MLP inputs,
                 outputs and masks; Korthikanti et al. 2022 count 34 x s x b x h for 16-bit, we keep fp32's factor in
                 the 1.2), or b x s x h x L x 4 bytes with it (one checkpoint per layer)
    logits       b x s x V x 4 bytes x 2 (the logits and their gradient; the largest single tensor for small models)

P is read from the safetensors headers (no weights loaded); h, L, V and the linear layers' shapes from config.json.
The device has what `torch.cuda.mem_get_info` reports free on a GPU, MemAvailable on a CPU; HUBFLOW_DEVICE_MEMORY
(e.g. "16GB") overrides it, for a worker that shares its device.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

from ..config import TrainConfig
from ..errors import PreflightError

log = logging.getLogger("hubflow")
OVERHEAD = 1.2
GiB = 1024**3


def estimate(model_dir: str, cfg: TrainConfig, seq_len: int, kind) -> dict[str, float]:
    """The estimate's parts in bytes (see the module docstring), and their total; `kind` says what it trains."""
    config = json.loads(Path(model_dir, "config.json").read_text())
    config = {**config.get("text_config", {}), **config}
    params = parameter_count(model_dir)
    h = config.get("hidden_size") or config.get("n_embd") or config.get("d_model") or 768
    layers = config.get("num_hidden_layers") or config.get("n_layer") or 12
    vocab = config.get("vocab_size") or 32000
    inter = config.get("intermediate_size") or 4 * h
    b = cfg.batch_size
    trainable, weight_bytes = kind.trainable_parameters(params, {"hidden": h, "layers": layers, "intermediate": inter},
                                                        cfg)
    parts = {
        "weights": params * weight_bytes,
        "gradients": trainable * 4.0,
        "optimizer": trainable * 8.0,
        "activations": b * seq_len * h * layers * (4.0 if cfg.activation_checkpointing else 34.0),
        "logits": b * seq_len * vocab * 4.0 * 2,
    }
    parts["total"] = OVERHEAD * sum(parts.values())
    return parts


def check_memory(model_dir: str, cfg: TrainConfig, seq_len: int, device, kind) -> None:
    """Refuse, with the figures, a job whose estimate exceeds the device's memory; log the estimate otherwise."""
    parts = estimate(model_dir, cfg, seq_len, kind)
    have, where = available(device)
    figures = ", ".join(f"{k} {_size(v)}" for k, v in parts.items() if k != "total")
    if parts["total"] > have:
        raise PreflightError(
            f"train: this job needs about {_size(parts['total'])} ({figures}, x{OVERHEAD} overhead) and {where} has "
            f"{_size(have)}; lower train.batch_size or preprocess.max_length, "
            "train fewer weights (a causal LM: train.method=lora), or turn on "
            "train.activation_checkpointing")
    log.info("memory estimate %s of %s on %s (%s)", _size(parts["total"]), _size(have), where, figures)


def _size(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 2**20:.1f} MiB"


def available(device) -> tuple[float, str]:
    override = os.environ.get("HUBFLOW_DEVICE_MEMORY")
    if override:
        return _parse_bytes(override), "HUBFLOW_DEVICE_MEMORY"
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return float(free), torch.cuda.get_device_name(device)
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return float(line.split()[1]) * 1024, "this machine's memory"
    return float("inf"), "this machine"


def parameter_count(model_dir: str) -> int:
    """Parameters of a model folder from its safetensors headers (8-byte length, then JSON), no tensor read; from the
    pickle file's size when there are no safetensors (fp32: 4 bytes each)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return sum(p.stat().st_size for p in Path(model_dir).glob("pytorch_model*.bin")) // 4
    total = 0
    for file in files:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, meta in header.items():
            if name != "__metadata__":
                count = 1
                for d in meta["shape"]:
                    count *= d
                total += count
    return total


def _parse_bytes(text: str) -> float:
    units = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 1024, "MIB": 1024**2, "GIB": GiB}
    number = text.strip().upper()
    digits = "".join(c for c in number if c.isdigit() or c == ".")
    unit = number[len(digits):].strip()
    if not digits or unit not in units:
        raise PreflightError(f"HUBFLOW_DEVICE_MEMORY={text!r} is not a size like '16GB' or '512MiB'")
    return float(digits) * units[unit]
