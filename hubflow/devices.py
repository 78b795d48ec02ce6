"""Where inference runs and in what precision: chosen once here, for every task kind."""

from __future__ import annotations

import torch


def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    # Half precision on GPU (bf16 where supported: fp16's range can overflow in logits); fp32 on CPU.
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cpu"), torch.float32
