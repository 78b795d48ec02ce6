"""Training on several processes: `torchrun` of hubflow.stages.train, on one machine or across machines.

One machine, N GPUs:  torchrun --standalone --nproc-per-node N -m hubflow.stages.train --tokenized-ref ... (what
`accelerate launch --multi_gpu` runs underneath; accelerate's Accelerator reads torchrun's environment).

N machines (a multi-node job; docs/multinode.md): every node runs torchrun with the same c10d rendezvous:

    node 0:  torchrun --nnodes N --nproc-per-node P --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id ID \
                 --rdzv-conf is_host=1 -m hubflow.stages.train --tokenized-ref ... --out-uri ...
    node i:  torchrun ... --rdzv-conf is_host=0 -m hubflow.stages.train --join

Node 0 is the flow run's process (its train stage calls `launch`); node 0's agent hosts the rendezvous store at
HOST:PORT. A joining node knows nothing of the run: its ranks receive the arguments from node 0's ranks over the
process group (`hubflow.stages.train --join`) and pull the base model themselves. The shape of the job comes from
the environment its infrastructure sets (deployments/pools/kubernetes-gpu-multinode.json):

    HUBFLOW_WORLD           "<nodes>x<processes per node>", e.g. "2x8"
    HUBFLOW_RDZV_ENDPOINT   host:port of node 0's rendezvous store
    HUBFLOW_JOB_NAME        the rendezvous id (the Kubernetes Job's name: unique per run)
    JOB_COMPLETION_INDEX    this node's index (an indexed Job sets it; 0 when unset)

The child processes write the checkpoint and its ref to the store; the ref comes back from there. Their output is
streamed line by line to `log` (the run log), so a multi-process run shows progress like a single-process one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from ..config import TrainConfig
from ..doors import store
from ..refs import CheckpointRef, ObserveSpec, PinnedRepo, TokenizedRef
from .observers import StopTrial

TRAIN_MODULE = "hubflow.stages.train"
STOPPED = "stopped.json"  # under the run's out_uri: the main rank's note that an observer stopped the training


@dataclass(frozen=True)
class World:
    """Where this process stands in a multi-node job, read from the environment its infrastructure set."""

    nodes: int
    procs_per_node: int
    node_rank: int
    endpoint: str
    rdzv_id: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "World | None":
        """The job's shape, or None outside a multi-node job (no HUBFLOW_WORLD)."""
        env = os.environ if env is None else env
        shape = env.get("HUBFLOW_WORLD", "").strip()
        if not shape:
            return None
        try:
            nodes, procs = (int(n) for n in shape.lower().split("x"))
        except ValueError:
            raise ValueError(f"HUBFLOW_WORLD={shape!r}: expected '<nodes>x<processes per node>', e.g. '2x8'") from None
        if nodes < 1 or procs < 1:
            raise ValueError(f"HUBFLOW_WORLD={shape!r}: nodes and processes per node must be at least 1")
        endpoint = env.get("HUBFLOW_RDZV_ENDPOINT", "")
        if nodes > 1 and ":" not in endpoint:
            raise ValueError(f"HUBFLOW_WORLD={shape!r} needs HUBFLOW_RDZV_ENDPOINT=host:port (node 0's rendezvous)")
        return cls(nodes=nodes, procs_per_node=procs, node_rank=int(env.get("JOB_COMPLETION_INDEX") or 0),
                   endpoint=endpoint, rdzv_id=env.get("HUBFLOW_JOB_NAME") or "hubflow")

    @property
    def multinode(self) -> bool:
        return self.nodes > 1

    def torchrun(self, nproc: int | None = None) -> list[str]:
        """The torchrun command (up to the module) this node runs."""
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc or self.procs_per_node)]
        if not self.multinode:
            return cmd + ["--standalone"]
        # c10d: node 0's agent hosts the store (is_host said explicitly: the endpoint's name may not resolve to
        # this pod's own address yet); the ranks are assigned as nodes join, and a restarted node can rejoin.
        return cmd + ["--nnodes", str(self.nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", self.endpoint,
                      "--rdzv-id", self.rdzv_id, "--rdzv-conf", f"is_host={int(self.node_rank == 0)}"]


def under_launcher() -> bool:
    """True in a process torchrun (or accelerate launch) started: it is one rank, not the launcher."""
    return "LOCAL_RANK" in os.environ


def ranks_to_launch(world: World | None, devices: int) -> int:
    """The one decision of how a training runs: 0 = in this process (it is a rank already, or there is one device);
    N = launch N local ranks with torchrun (every GPU of a multi-GPU worker; on node 0 of a multi-node job, its
    share of the world's ranks, the other nodes joining)."""
    if under_launcher():
        return 0
    if world and world.multinode:
        return world.procs_per_node
    return devices if devices > 1 else 0


def launch(tokenized: TokenizedRef, model_dir: str, model: PinnedRepo, cfg: TrainConfig, out: str, nproc: int,
           allow_pickle: bool, log: Callable[[str], None], world: World | None = None,
           observe: ObserveSpec | None = None) -> CheckpointRef:
    """Train with torchrun: `nproc` processes here, plus the other nodes' when this is node 0 of a multi-node job.

    `observe` goes to the ranks as JSON (the main rank builds the observers); when one of them stopped the training
    (the ranks exit non-zero, leaving `{out}/stopped.json`), StopTrial is raised here too."""
    world = world or World.from_env() or World(1, nproc, 0, "", "hubflow")
    cmd = world.torchrun(nproc if not world.multinode else None) + [
        "-m", TRAIN_MODULE, "--tokenized-ref", tokenized.model_dump_json(), "--model-dir", model_dir,
        "--base-model", model.model_dump_json(), "--config", cfg.model_dump_json(), "--out-uri", out]
    if allow_pickle:
        cmd.append("--allow-pickle")
    if observe is not None:
        cmd += ["--observe", observe.model_dump_json()]
    stopped = store.join(out, STOPPED)
    store.remove(stopped)  # an earlier session's note is not this one's
    where = f"{world.nodes} nodes x {world.procs_per_node}" if world.multinode else f"{nproc}"
    log(f"torchrun: {where} processes, rendezvous {world.endpoint or 'local'}")
    code = _stream(cmd, log)
    if code and store.exists(stopped):
        note = store.read_json(stopped)
        raise StopTrial(note.get("reason") or "stopped by an observer", note.get("step"))
    if code:
        raise RuntimeError(f"torchrun ({where} processes) exited with {code}")
    return CheckpointRef.model_validate(store.read_json(store.join(out, "checkpoint_ref.json")))


def join(world: World, log: Callable[[str], None]) -> int:
    """Node i > 0: join node 0's rendezvous as `procs_per_node` more ranks of its training -> torchrun's exit code."""
    return _stream(world.torchrun() + ["-m", TRAIN_MODULE, "--join"], log)


def endpoint_open(endpoint: str, timeout: float = 2.0) -> bool:
    """True when something accepts connections at host:port (node 0's rendezvous store is up)."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:  # refused, unreachable, or the name does not resolve yet (pod 0 not scheduled)
        return False


def wait_for_endpoint(endpoint: str, give_up: Callable[[], bool], poll_seconds: float = 2.0) -> bool:
    """Wait until node 0's rendezvous store accepts connections (True), or until `give_up()` says so (False).

    A joining node waits here rather than in torchrun, whose store client gives up after 60 s: node 0 only starts
    its rendezvous once the flow run reaches the train stage, minutes after the pods start (pulls, preprocessing).
    """
    while not endpoint_open(endpoint):
        if give_up():
            return False
        time.sleep(poll_seconds)
    return True


def _stream(cmd: list[str], log: Callable[[str], None]) -> int:
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:  # type: ignore[union-attr]
            log(line.rstrip())
    return proc.returncode
