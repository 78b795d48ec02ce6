"""Where inference runs and in what precision: chosen once here, for every task kind.

    device_and_dtype(precision)         (device, dtype) for batch inference; int8 is (cpu, torch.qint8)
    quantize_int8(model)                the model with its body's nn.Linear layers quantized to int8 (CPU)
"""

from __future__ import annotations

import torch

from .config import InferencePrecision, check_inference_precision


def device_and_dtype(
    precision: InferencePrecision | str = InferencePrecision.auto,
) -> tuple[torch.device, torch.dtype]:
    """The device and dtype a predictor loads with. `torch.qint8` stands for int8: the model loads in fp32 and its
    linear layers are quantized (`quantize_int8`); the dtype is part of every prediction shard's id."""
    precision = InferencePrecision(precision)
    cuda = torch.cuda.is_available()
    check_inference_precision(precision, cuda)  # one line, before a model is loaded
    if precision is InferencePrecision.int8:
        return torch.device("cpu"), torch.qint8
    if precision is InferencePrecision.fp32:
        return torch.device("cuda" if cuda else "cpu"), torch.float32
    # auto: half precision on GPU (bf16 where supported: fp16's range can overflow in logits); fp32 on CPU.
    if cuda:
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cpu"), torch.float32


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of the nn.Linear layers of the model's body (`model.base_model`), in place: weights
    int8 per tensor, activations quantized per batch at run time. The body's linear layers hold ~80% of a small
    encoder's inference time on CPU (fbgemm's int8 GEMM on x86); embeddings, LayerNorm, softmax and the task head stay
    fp32 (the head sees one vector per row: int8 would save nothing there and only add error to the scores)."""
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch 2.10+ marks torch.ao.quantization deprecated in favour of torchao (not a dependency here); the eager
        # dynamic path still ships and runs in torch 2.13 (its speed and accuracy here: docs/benchmarks.md).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated", category=UserWarning)
        quantize_dynamic(getattr(model, "base_model", model), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return model
