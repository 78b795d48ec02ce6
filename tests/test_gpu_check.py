"""`make gpu-check` (bench/gpu_check.py) on a machine without a GPU: one clear line and exit status 1, before
anything is installed; and (slow) its figures' code, run on the CPU at small sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def gpu_check(*args: str, path: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path}
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_without_nvidia_smi_it_stops_at_once_with_one_line(tmp_path):
    out = gpu_check("--python", str(tmp_path / "venv" / "bin" / "python"), path=str(tmp_path))  # no nvidia-smi there
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.splitlines() == [
        "gpu-check: no CUDA GPU visible (nvidia-smi: not found) — run this on a GPU machine"]
    assert not (tmp_path / "venv").exists()  # nothing was made or installed


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_torch_cannot_see_stops_it_with_the_torch_build_named(tmp_path):
    smi = tmp_path / "nvidia-smi"  # a driver that lists a GPU, as on a machine whose torch is a CPU build
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    out = gpu_check("--python", sys.executable, "--no-install", path=f"{tmp_path}:{os.environ['PATH']}")
    assert out.returncode == 1
    assert out.stdout.splitlines() == ["gpu-check: GPU 0: NVIDIA H200 (UUID: GPU-0)"]
    (line,) = out.stderr.splitlines()
    assert line.startswith("gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False with torch "
                           f"{torch.__version__}") and line.endswith("— run this on a GPU machine"), line


@pytest.mark.slow
def test_the_figures_code_runs_on_the_cpu_at_small_sizes():
    out = gpu_check("--measure", "--quick", "--allow-cpu", path=os.environ["PATH"], timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    values = dict(line.split(": ", 1) for line in out.stdout.split("# gpu-check (name: value)\n")[1].splitlines())
    assert set(values) == {"train_bf16_samples_per_s", "train_bf16_job_samples_per_s", "train_bf16_tflops",
                           "train_bf16_mfu", "inference_texts_per_s", "inference_vs_pipeline", "inference_vs_bare",
                           "lora_tokens_per_s", "generate_tokens_per_s"}
    assert values["train_bf16_mfu"] == "unknown peak for 'cpu'" and float(values["inference_vs_bare"]) > 0
