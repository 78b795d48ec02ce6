"""Training on every GPU of a worker: `accelerate launch --multi_gpu` of hubflow.stages.train.

The child processes write the checkpoint and its ref to the store; the ref comes back from there. Their output is
streamed line by line to `log` (the run log), so a multi-GPU run shows progress like a single-process one.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Callable

from ..config import TrainConfig
from ..doors import store
from ..refs import CheckpointRef, PinnedRepo, TokenizedRef


def accelerate_launch(tokenized: TokenizedRef, model_dir: str, model: PinnedRepo, cfg: TrainConfig, out: str,
                      gpus: int, allow_pickle: bool, log: Callable[[str], None]) -> CheckpointRef:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
           "--mixed_precision", cfg.precision.value, "-m", "hubflow.stages.train",
           "--tokenized-ref", tokenized.model_dump_json(), "--model-dir", model_dir,
           "--base-model", model.model_dump_json(), "--config", cfg.model_dump_json(), "--out-uri", out]
    if allow_pickle:
        cmd.append("--allow-pickle")
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:  # type: ignore[union-attr]
            log(line.rstrip())
    if proc.returncode:
        raise RuntimeError(f"accelerate launch on {gpus} GPUs exited with {proc.returncode}")
    return CheckpointRef.model_validate(store.read_json(store.join(out, "checkpoint_ref.json")))
