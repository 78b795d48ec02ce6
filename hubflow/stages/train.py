"""Fine-tune a model on a tokenized dataset; resumable; the same code on CPU, one GPU or N GPUs, for every task kind.

tokenized (TokenizedRef) + base model folder -> `{out_uri}/model` (the best evaluation's weights as safetensors,
tokenizer, `hubflow.json` with the model's facts), `{out_uri}/history.json`, `{out_uri}/checkpoint_ref.json`
-> CheckpointRef. The task kind (`tokenized.facts.task`) loads the model, collates batches, validates and ranks.

In process (what the flow's task does):   train_model(tokenized, model_dir, base_model, cfg, out_uri)
On N GPUs:   torchrun --standalone --nproc-per-node N -m hubflow.stages.train --tokenized-ref '<json>' \
                 --model-dir DIR --base-model '<json>' --config '<json>' --out-uri s3://bucket/runs/x
On N nodes:  the same on node 0 with a c10d rendezvous; the other nodes run `... -m hubflow.stages.train --join`
             and take the arguments from node 0 (launch.py, docs/multinode.md)

Resume: every `checkpoint_every_steps` optimizer steps and at each epoch end the loop writes an explicit
checkpoint to `{out_uri}/resume/step-*/` and then points `{out_uri}/resume/latest.json` at it. A rerun with the
same out_uri (a Prefect retry) loads it and carries on from that step, skipping the batches already consumed.
The checkpoint layout and the same-run check are in resume.py.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..config import TrainConfig
from ..doors import store
from ..kinds import kind_for
from ..refs import CheckpointRef, ModelFacts, ObserveSpec, PinnedRepo, TokenizedRef
from . import launch, resume
from .facts import weights_fingerprint, write_facts
from .memory import check_memory
from .observers import Observers, StopTrial, build_observers
from .resume import LoopState

Progress = Callable[[float, str], None]

LOG_EVERY = 10  # optimizer steps between loss read-backs: one host sync per LOG_EVERY steps, not per step
MAX_GRAD_NORM = 1.0  # transformers.Trainer's default clipping; fine-tuning is unstable without it


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Shuffled indices arranged so each consecutive `batch_size` chunk holds similar lengths.

    Per epoch: a seeded permutation is cut into mega-batches of 50 batches, each sorted by length and cut into
    batches; then the batch order is shuffled. Dynamic padding then pads each batch to nearly its own length, which
    is where the speed over plain shuffling comes from. Deterministic in (seed, epoch), so a resumed run sees the
    same batches and `skip_first_batches` can skip exactly the consumed ones.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = np.asarray(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).numpy()
        mega = self.batch_size * 50  # a multiple of batch_size: batches never straddle two mega-batches
        chunks = [perm[i : i + mega] for i in range(0, len(perm), mega)]
        order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks] or [perm])
        full = len(order) - len(order) % self.batch_size
        batches = order[:full].reshape(-1, self.batch_size)
        batches = batches[torch.randperm(len(batches), generator=g).numpy()]
        # The short tail batch goes last, so every batch before it has exactly batch_size rows.
        yield from np.concatenate([batches.ravel(), order[full:]]).tolist()


def train_model(
    tokenized: TokenizedRef,
    model_dir: str,
    base_model: PinnedRepo,
    cfg: TrainConfig,
    out_uri: str,
    on_progress: Progress | None = None,
    allow_pickle: bool = False,
    observe: ObserveSpec | None = None,
) -> CheckpointRef:
    """Fine-tune `model_dir` on `tokenized` (train split; validation each epoch); keep the best evaluation's weights.

    On a multi-GPU worker, and on node 0 of a multi-node job (HUBFLOW_WORLD, see launch.py), this call launches
    the training's ranks with torchrun instead (launch.ranks_to_launch decides, once), and returns the ref they
    wrote.

    `observe` names who watches the training (observers.py: a tracker, a sweep's pruner); the main process calls
    them. An observer's StopTrial stops the training at that evaluation: `{out_uri}/stopped.json` says where, no
    model is written, and StopTrial propagates (from torchrun's ranks too, through launch)."""
    world = launch.World.from_env()
    ranks = launch.ranks_to_launch(world, torch.cuda.device_count())
    if ranks:
        log = logging.getLogger(__name__).info  # the run log: the gpu pool lists hubflow in the extra loggers
        where = f"{world.nodes} nodes x {ranks}" if world and world.multinode else f"{ranks}"
        if on_progress:
            on_progress(0.0, f"training on {where} processes (torchrun)")
        ref = launch.launch(tokenized, model_dir, base_model, cfg, out_uri, ranks, allow_pickle, log, world,
                            observe=observe)
        if on_progress:
            on_progress(1.0, f"model written to {ref.uri}")
        return ref
    main = int(os.environ.get("RANK", "0")) == 0  # accelerate's main process, known before it is set up
    observers = build_observers(observe) if main else Observers()
    try:
        ref, figures = _train_here(tokenized, model_dir, base_model, cfg, out_uri, on_progress, allow_pickle, observers)
    except StopTrial as stop:
        observers.on_end(None, f"stopped: {stop}")
        if main:
            store.write_json(store.join(out_uri, launch.STOPPED), {"step": stop.step, "reason": str(stop)})
        raise
    except BaseException as exc:
        observers.on_end(None, f"{type(exc).__name__}: {exc}")
        raise
    observers.on_end(figures, None)
    return ref


def _train_here(tokenized: TokenizedRef, model_dir: str, base_model: PinnedRepo, cfg: TrainConfig, out_uri: str,
                on_progress: Progress | None, allow_pickle: bool, observers: Observers) -> tuple[CheckpointRef, dict]:
    """train_model in this process (one rank of a launched training, or the only one) -> the ref and the run's
    figures (samples/s, peak memory) for the observers."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    started = time.perf_counter()
    # accelerate keeps its settings in process-wide singletons and refuses a second Accelerator with another mixed
    # precision. A Prefect worker runs many trainings in one process, so each starts from clean state; the process
    # group (PartialState) is kept, so this is a no-op under torchrun.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(
        mixed_precision=cfg.precision.value, gradient_accumulation_steps=cfg.gradient_accumulation_steps
    )
    set_seed(cfg.seed)
    progress = on_progress if (on_progress and accelerator.is_main_process) else (lambda f, m: None)

    kind, facts = kind_for(tokenized.facts.task), tokenized.facts
    check_memory(model_dir, cfg, facts.max_length, accelerator.device, kind)  # before a minute of device time is spent
    model, tokenizer = kind.load_for_training(model_dir, facts, cfg, allow_pickle)
    train_dl, eval_dl = _dataloaders(tokenized, tokenizer, cfg, accelerator, kind)
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, fused=accelerator.device.type == "cuda"
    )
    # Counted per process: accelerate deals the batches out round-robin, padding the last round so all get as many.
    batches_per_epoch = math.ceil(len(train_dl) / accelerator.num_processes)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    # The prepared scheduler steps once per process per optimizer step, hence the num_processes factor.
    scheduler = get_linear_schedule_with_warmup(
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * total_steps) * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes,
    )
    model, optimizer, train_dl, eval_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, eval_dl, scheduler)

    run = resume.Run(accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, out_uri=out_uri,
                     total_steps=total_steps, steps_per_epoch=steps_per_epoch, progress=progress, started=started,
                     samples_per_step=cfg.batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes,
                     observers=observers)
    run_key = {"config": cfg.model_dump(mode="json"), "data": tokenized.fingerprint, "base_model": base_model.sha}
    st = resume.load_latest(run, run_key) or LoopState.fresh(run_key, total_steps, steps_per_epoch)
    run.prior_seconds = st.train_seconds
    observers.on_start({"config": cfg.model_dump(mode="json"), "base_model": base_model.model_dump(mode="json"),
                        "data_fingerprint": tokenized.fingerprint, "task": facts.task, "total_steps": total_steps,
                        "steps_per_epoch": steps_per_epoch, "processes": accelerator.num_processes,
                        "resumed_at_step": st.step, "hardware": _hardware(accelerator, cfg.precision.name)})

    while st.step < total_steps and st.epoch < n_epochs:
        model.train()
        train_dl.set_epoch(st.epoch)  # the sampler's order is a function of the epoch; set before skipping
        batches = accelerator.skip_first_batches(train_dl, st.batch) if st.batch else train_dl
        micro_loss, micro_n, pending = torch.zeros((), device=accelerator.device), 0, []
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                optimizer.step()  # accelerate makes these no-ops on accumulation-only micro-batches
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            micro_loss, micro_n = micro_loss + loss.detach(), micro_n + 1
            st.batch += 1
            if not accelerator.sync_gradients:
                continue
            st.step += 1
            # Losses stay on the device; they are read back LOG_EVERY steps at a time (one host sync).
            pending.append((micro_loss / micro_n, scheduler.get_last_lr()[0]))
            micro_loss, micro_n = torch.zeros((), device=accelerator.device), 0
            if len(pending) == LOG_EVERY:
                _flush_losses(run, st, pending)
            if st.step >= total_steps:
                break
            if st.step % cfg.checkpoint_every_steps == 0:
                _flush_losses(run, st, pending)
                resume.save_checkpoint(run, st)
                progress(st.step / total_steps, f"checkpoint saved at step {st.step}")
        _flush_losses(run, st, pending)
        if st.batch >= batches_per_epoch:
            st.epoch, st.batch = st.epoch + 1, 0

        metrics = kind.validate(model, eval_dl, accelerator, facts)
        metrics.update(step=st.step, epoch=round(st.step / steps_per_epoch, 4))
        st.history["evals"].append(metrics)
        if st.best is None or kind.rank(metrics) > kind.rank(st.best):
            st.best, st.best_dir = metrics, st.next_dir()  # the checkpoint below holds these weights
        resume.save_checkpoint(run, st)
        shown = " ".join(f"{k.removeprefix('eval_')} {v:.4f}" for k, v in metrics.items() if k.startswith("eval_"))
        progress(st.step / total_steps, f"epoch {metrics['epoch']:.2f}: {shown}")
        _observe_evaluation(run, metrics)

    ref = _finalize(run, st, tokenizer, facts, base_model, cfg)
    progress(1.0, f"model written to {ref.uri}")
    return ref, _figures(run, st, ref)


def _observe_evaluation(run: resume.Run, metrics: dict) -> None:
    """Hand an epoch's validation to the observers; raise StopTrial on every process when one asks to stop."""
    acc, stop = run.accelerator, None
    try:
        run.observers.on_evaluate(int(metrics["step"]), float(metrics["epoch"]),
                                  {k: float(v) for k, v in metrics.items() if k.startswith("eval_")})
    except StopTrial as exc:
        stop = exc
        stop.step = stop.step if stop.step is not None else int(metrics["step"])
    if acc.num_processes > 1:  # the other ranks stop with the main one, or they would wait for it forever
        flag = acc.reduce(torch.tensor(float(stop is not None), device=acc.device), reduction="sum").item()
        if flag and stop is None:
            stop = StopTrial("stopped by the main process's observer", int(metrics["step"]))
    if stop is not None:
        raise stop


def _figures(run: resume.Run, st: LoopState, ref: CheckpointRef) -> dict:
    """The run's system figures: throughput over its training time, peak memory (the GPU's, else the process's)."""
    import resource

    figures = {"train_seconds": ref.train_seconds, "steps": st.step, "hardware": ref.hardware, "model_uri": ref.uri,
               "metrics": dict(ref.metrics),
               "samples_per_second": round(st.step * run.samples_per_step / max(run.seconds(), 1e-9), 3),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if run.accelerator.device.type == "cuda":
        figures["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(run.accelerator.device) / 2**20, 1)
    return figures


def _dataloaders(tokenized: TokenizedRef, tokenizer, cfg: TrainConfig, accelerator, kind):
    """Length-grouped shuffled train batches and length-sorted eval batches, both padded per batch (the kind's
    collator)."""
    import pyarrow.compute as pc
    from torch.utils.data import DataLoader

    dsd = store.load_dataset(tokenized.uri)
    # The kind's training columns that this data has (packed causal-LM rows also carry position ids).
    train, val = (dsd[s].select_columns([c for c in kind.train_columns if c in dsd[s].column_names])
                  for s in ("train", "validation"))
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"{tokenized.uri}: train and validation splits must not be empty")

    def lengths(ds) -> np.ndarray:
        return pc.list_value_length(ds.with_format("arrow")[:]["input_ids"]).to_numpy()

    on_gpu = accelerator.device.type == "cuda"
    collate = kind.collator(tokenizer, on_gpu)
    train_dl = DataLoader(
        train,
        batch_size=cfg.batch_size,
        sampler=LengthGroupedSampler(lengths(train), cfg.batch_size, cfg.seed),
        collate_fn=collate,
        pin_memory=on_gpu,
        # Its own generator: creating an iterator then draws no numbers from the global RNG, so dropout's stream
        # depends only on the steps taken, and a resumed run continues it exactly.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    eval_order = np.argsort(-lengths(val), kind="stable").tolist()
    eval_dl = DataLoader(val, batch_size=cfg.eval_batch_size, sampler=eval_order, collate_fn=collate, pin_memory=on_gpu)
    return train_dl, eval_dl


def _param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    # Biases and norm scales (all the 1-d parameters) are not decayed: shrinking them towards 0 only hurts.
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def _flush_losses(run: resume.Run, st: LoopState, pending: list) -> None:
    """Read the pending per-step losses back (one sync), averaged over processes, into the history."""
    if not pending:
        return
    losses = run.accelerator.reduce(torch.stack([loss for loss, _ in pending]), reduction="mean").tolist()
    first = st.step - len(pending) + 1
    for i, (loss, (_, lr)) in enumerate(zip(losses, pending)):
        st.history["steps"].append({"step": first + i, "loss": loss, "lr": lr})
        if run.observers:
            run.observers.on_step(first + i, loss, lr)
    pending.clear()
    seconds = max(run.seconds(), 1e-9)
    rate = st.step * run.samples_per_step / seconds
    eta = (run.total_steps - st.step) * seconds / max(st.step, 1)
    run.progress(st.step / run.total_steps, f"step {st.step}/{run.total_steps} loss {losses[-1]:.4f}, "
                 f"{rate:.1f} samples/s, ETA {clock(eta)}")


def clock(seconds: float) -> str:
    """1234.5 -> '20:34' (minutes:seconds; hours when there are any)."""
    m, s = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# --- the final model ---


def _hardware(accelerator, precision: str) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes}x {torch.cuda.get_device_name(accelerator.device)} ({precision})"
    procs = f" x{accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""
    return f"cpu x{torch.get_num_threads()} threads{procs} ({precision})"


def _finalize(run: resume.Run, st: LoopState, tokenizer, facts: ModelFacts, base_model: PinnedRepo,
              cfg: TrainConfig) -> CheckpointRef:
    """Write the best weights as save_pretrained folders (the kind's: `model`, and `adapter` for LoRA), plus history
    and the ref; every process returns the ref."""
    acc = run.accelerator
    ref_uri = run.uri("checkpoint_ref.json")
    if acc.is_main_process:
        model = acc.unwrap_model(run.model)
        fingerprints = {}
        with tempfile.TemporaryDirectory() as tmp:
            resume.load_weights(model, run.uri("resume", st.best_dir), tmp)
            kind = kind_for(facts.task)
            for name, folder in kind.save_model(model, tokenizer, Path(tmp, "out"), base_model).items():
                # The model's facts travel with its weights (and are published with them); an adapter names its base.
                write_facts(folder, kind.folder_facts(name, facts, base_model))
                fingerprints[name] = weights_fingerprint(folder)
                store.remove(run.uri(name))  # no stale files from an earlier layout survive next to the new ones
                store.put_dir(folder, run.uri(name))
        store.write_json(run.uri("history.json"), st.history)
        ref = CheckpointRef(
            uri=run.uri("model"),
            fingerprint=fingerprints["model"],
            adapter_uri=run.uri("adapter") if "adapter" in fingerprints else None,
            adapter_fingerprint=fingerprints.get("adapter"),
            facts=facts,
            base_model=base_model,
            metrics={k: float(v) for k, v in st.best.items() if k.startswith("eval_")},
            history_uri=run.uri("history.json"),
            train_seconds=round(run.seconds(), 3),
            hardware=_hardware(acc, cfg.precision.name),
        )
        store.write_json(ref_uri, ref.model_dump(mode="json"))
        if not cfg.keep_resume_checkpoints:
            # Retention: the final model and history are what a finished run needs; its resume checkpoints (for
            # MiniLM ~540 MB) would only fill the store. Removed after the ref is written: a crash in between leaves
            # a finished run with checkpoints, never a run without its model.
            store.remove(run.uri("resume"))
    acc.wait_for_everyone()
    return CheckpointRef.model_validate(store.read_json(ref_uri))


def main(argv: list[str] | None = None) -> None:
    import argparse

    from accelerate import PartialState

    parser = argparse.ArgumentParser(description="Fine-tune a model (run under torchrun; see launch.py).")
    parser.add_argument("--tokenized-ref", type=TokenizedRef.model_validate_json, help="ref JSON")
    parser.add_argument("--model-dir", help="local folder of the base model snapshot")
    parser.add_argument("--base-model", type=PinnedRepo.model_validate_json, help="PinnedRepo JSON")
    parser.add_argument("--config", type=TrainConfig.model_validate_json, help="TrainConfig JSON")
    parser.add_argument("--out-uri", help="store URI the run writes under")
    parser.add_argument("--allow-pickle", action="store_true", help="the base model may be pytorch_model.bin")
    parser.add_argument("--observe", type=ObserveSpec.model_validate_json, help="ObserveSpec JSON (who watches)")
    parser.add_argument("--join", action="store_true",
                        help="a joining node of a multi-node run: every other argument comes from node 0's ranks")
    args = parser.parse_args(argv)
    if not args.join and None in (args.tokenized_ref, args.model_dir, args.base_model, args.config, args.out_uri):
        parser.error("--tokenized-ref, --model-dir, --base-model, --config and --out-uri are required (or --join)")

    # Joins the process group torchrun set up. Without CUDA accelerate only forms a (gloo) group when told cpu=True;
    # told nothing, each rank would train alone as a world of one.
    state = PartialState(cpu=not torch.cuda.is_available())
    run = _run_arguments(args, state)
    model_dir = args.model_dir
    if args.join:
        from ..doors import hub

        # Each rank asks: the Hub cache's file locks make a node's ranks download each file once. (Not
        # local_main_process_first: its barrier is global, and node 0's ranks never enter it.)
        model_dir = hub.model_dir(run["base_model"], run["allow_pickle"])
    print(f"rank {state.process_index} of {state.num_processes} (node {os.environ.get('GROUP_RANK', 0)}, "
          f"local rank {state.local_process_index}): training into {run['out_uri']}", flush=True)
    ref = train_model(run["tokenized"], model_dir, run["base_model"], run["config"], run["out_uri"],
                      allow_pickle=run["allow_pickle"], observe=run.get("observe"))
    if state.is_main_process:
        print(ref.model_dump_json())


def _run_arguments(args, state) -> dict[str, Any]:
    """The run's arguments: this process's own, or (joining ranks) node 0's, gathered over the process group."""
    own = None if args.join else {
        "tokenized": args.tokenized_ref, "base_model": args.base_model, "config": args.config,
        "out_uri": args.out_uri, "allow_pickle": args.allow_pickle, "observe": args.observe,
    }
    if state.num_processes == 1:
        if own is None:
            raise SystemExit("--join needs a multi-node torchrun: there is no node 0 to take the arguments from")
        return own
    # Gathered from everyone rather than broadcast from rank 0: c10d hands out ranks by the order nodes sort in,
    # so global rank 0 need not be on node 0.
    everyone: list[dict | None] = [None] * state.num_processes
    torch.distributed.all_gather_object(everyone, own)
    return next(a for a in everyone if a is not None)


if __name__ == "__main__":
    main()
