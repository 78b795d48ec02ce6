"""Resume checkpoints of a training run: explicit dicts under `{out_uri}/resume/`, made current by rewriting one file.

Layout (one run = one out_uri; a Prefect retry reruns with the same out_uri and carries on):

    {out_uri}/resume/
        latest.json            {"dir": "step-00000014-0002"}: the checkpoint a rerun resumes from
        step-SSSSSSSS-NNNN/    one checkpoint: optimizer step S, the run's N-th save (a step can be saved twice:
                               at a multiple of `checkpoint_every_steps`, and after the epoch's evaluation)
            model.safetensors  the unwrapped model's weights (main process); `trainable.safetensors` instead when
                               most weights are frozen (LoRA): only the adapters change
            state.pt           {"state": the loop state, "optimizer", "scheduler", "scaler"} (main process)
            rng-<process>.pt   python, numpy, torch and cuda RNG states of each process (its dropout stream)

`save_checkpoint` writes the folder, then rewrites latest.json (a small atomic write: a crash before it leaves the
previous checkpoint current), then removes every other `step-*` folder except the best evaluation's (`best_dir`),
whose weights become the final model. `load_latest` restores all of it into the prepared objects, after checking
that the checkpoint belongs to the same run: same data fingerprint, base model sha and config, except the settings
in `_RESUMABLE_CHANGES` (a longer max_steps/epochs extends the run). Files load with torch.load(weights_only=True),
so the saved state holds only plain values and tensors.

The loop state (`LoopState`) is what train.py's loop advances: epoch, batch within the epoch, step, saves, the
best metrics and their folder, training seconds so far, and the history that becomes `{out_uri}/history.json`.
"""

from __future__ import annotations

import io
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..doors import store

# Settings that may change between a run and its resumption; any other change means a different run.
_RESUMABLE_CHANGES = {"epochs", "max_steps", "checkpoint_every_steps", "eval_batch_size", "keep_resume_checkpoints"}


@dataclass
class Run:
    """What the training helpers share: the prepared objects, where to write, and the clock."""

    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    out_uri: str
    total_steps: int
    steps_per_epoch: int
    progress: Callable[[float, str], None]
    started: float
    samples_per_step: int = 0  # examples per optimizer step over every process (for the progress line's rate)
    prior_seconds: float = 0.0
    observers: Any = None  # the main process's watchers (observers.Observers); on_step is called on loss read-back

    def seconds(self) -> float:
        """Training wall time over every session of this run (a resumed run adds to the earlier ones)."""
        return self.prior_seconds + time.perf_counter() - self.started

    def uri(self, *parts: str) -> str:
        return store.join(self.out_uri, *parts)


@dataclass
class LoopState:
    """Where the training loop is; saved in every checkpoint as plain values (it loads with weights_only=True)."""

    run_key: dict  # config, data fingerprint, base model sha: what makes two sessions the same run
    epoch: int = 0  # epochs finished
    batch: int = 0  # batches of the current epoch already consumed (this process)
    step: int = 0  # optimizer steps taken
    saves: int = 0  # checkpoints written; makes every checkpoint folder name unique
    train_seconds: float = 0.0
    best: dict | None = None  # validation metrics of the best evaluation so far
    best_dir: str | None = None  # the resume folder holding that evaluation's weights
    history: dict = field(default_factory=dict)  # steps, evals, resumed_from, total_steps, steps_per_epoch

    @classmethod
    def fresh(cls, run_key: dict, total_steps: int, steps_per_epoch: int) -> "LoopState":
        """The state of a run that starts at step 0."""
        return cls(run_key=run_key, history={"steps": [], "evals": [], "resumed_from": [], "total_steps": total_steps,
                                             "steps_per_epoch": steps_per_epoch})

    def next_dir(self) -> str:
        """The folder name the next `save_checkpoint` writes (unique: it counts saves)."""
        return f"step-{self.step:08d}-{self.saves:04d}"


def _rng_state() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch, cuda)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        # numpy's state as plain values and a tensor, so the file loads with torch.load(weights_only=True)
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng(rng: dict[str, Any]) -> None:
    """Restore what `_rng_state` saved (cuda only on the same number of devices)."""
    random.setstate(rng["python"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_checkpoint(run: Run, st: LoopState) -> None:
    """Write model, optimizer, scheduler, RNG and loop state; then make it the one a retry resumes from."""
    acc = run.accelerator
    name = st.next_dir()
    st.saves += 1
    st.train_seconds = run.seconds()
    with tempfile.TemporaryDirectory() as tmp:
        if acc.is_main_process:
            save_weights(acc.unwrap_model(run.model), tmp)
            torch.save(
                {
                    "state": asdict(st),
                    "optimizer": run.optimizer.state_dict(),
                    "scheduler": run.scheduler.state_dict(),
                    "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                },
                f"{tmp}/state.pt",
            )
        torch.save(_rng_state(), f"{tmp}/rng-{acc.process_index}.pt")  # dropout streams differ per process
        store.put_dir(tmp, run.uri("resume", name))
    acc.wait_for_everyone()
    if acc.is_main_process:
        # Until this small atomic write lands, a crash leaves the previous checkpoint current.
        store.write_json(run.uri("resume", "latest.json"), {"dir": name})
        for other in store.ls(run.uri("resume")):
            if other.startswith("step-") and other not in (name, st.best_dir):
                store.remove(run.uri("resume", other))
    acc.wait_for_everyone()


def load_latest(run: Run, run_key: dict) -> LoopState | None:
    """Restore the latest checkpoint under `{out_uri}/resume` into the prepared objects; None when there is none."""
    latest = run.uri("resume", "latest.json")
    if not store.exists(latest):
        return None
    folder = run.uri("resume", store.read_json(latest)["dir"])
    saved = _torch_load(store.join(folder, "state.pt"))
    st = LoopState(**saved["state"])
    _check_same_run(st.run_key, run_key, run.out_uri)
    acc = run.accelerator
    with tempfile.TemporaryDirectory() as tmp:
        load_weights(acc.unwrap_model(run.model), folder, tmp)
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    if acc.scaler is not None and saved["scaler"]:
        acc.scaler.load_state_dict(saved["scaler"])
    rng_uri = store.join(folder, f"rng-{acc.process_index}.pt")
    _set_rng(_torch_load(rng_uri if store.exists(rng_uri) else store.join(folder, "rng-0.pt")))
    # A longer max_steps/epochs on resume moves the end of training; the schedule and history follow it.
    st.run_key = run_key
    st.history.update(total_steps=run.total_steps, steps_per_epoch=run.steps_per_epoch)
    st.history["resumed_from"].append(st.step)
    run.progress(st.step / run.total_steps, f"resumed from checkpoint at step {st.step}/{run.total_steps}")
    return st


def save_weights(model, folder: str) -> None:
    """The weights a checkpoint needs: all of them (model.safetensors), or, when most are frozen (LoRA), only the
    trainable ones (trainable.safetensors): a 1 GB base is not rewritten at every checkpoint."""
    from safetensors.torch import save_file, save_model

    params = list(model.named_parameters())
    if all(p.requires_grad for _, p in params):
        save_model(model, f"{folder}/model.safetensors")
    else:
        save_file({n: p.detach().contiguous().cpu() for n, p in params if p.requires_grad},
                  f"{folder}/trainable.safetensors")


def load_weights(model, checkpoint_uri: str, tmp: str) -> None:
    """Restore what `save_weights` wrote into `model` (in place)."""
    from safetensors.torch import load_file, load_model

    full = store.join(checkpoint_uri, "model.safetensors")
    if store.exists(full):
        load_model(model, str(store.get_file(full, tmp)))
        return
    state = load_file(str(store.get_file(store.join(checkpoint_uri, "trainable.safetensors"), tmp)))
    missing = set(state) - {n for n, _ in model.named_parameters()}
    if missing:
        raise ValueError(f"{checkpoint_uri}: weights for parameters this model does not have: {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)


def _check_same_run(saved: dict, current: dict, out_uri: str) -> None:
    """Raise ValueError when the saved run key differs from the current one beyond `_RESUMABLE_CHANGES`."""
    changed = [k for k in ("data", "base_model") if saved[k] != current[k]]
    changed += [
        f"config.{k}"
        for k in sorted(set(saved["config"]) | set(current["config"]))
        if k not in _RESUMABLE_CHANGES and saved["config"].get(k) != current["config"].get(k)
    ]
    if changed:
        raise ValueError(
            f"{out_uri}/resume holds a checkpoint of a different run ({', '.join(changed)} differ); "
            "use a fresh out_uri or remove the resume folder"
        )


def _torch_load(uri: str) -> Any:
    """torch.load a store URI onto the CPU, plain values and tensors only."""
    return torch.load(io.BytesIO(store.read_bytes(uri)), map_location="cpu", weights_only=True)
