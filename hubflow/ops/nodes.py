"""The command of every pod of a multi-node training job: `python -m hubflow.ops.nodes <the flow run's command>`.

A Prefect kubernetes worker turns a flow run into one Kubernetes Job whose container runs the flow run
(`prefect flow-run execute`). The multi-node template (deployments/pools/kubernetes-gpu-multinode.json) makes that
Job indexed, with one pod per node, and puts this module in front of the worker's command:

* index 0 runs the flow run (exec: the process becomes the flow run, as in a one-pod job). Its train stage sees
  HUBFLOW_WORLD and launches torchrun as node 0, hosting the rendezvous (hubflow/stages/launch.py).
* index i > 0 pulls the run's base model (the flow run's `base_model` parameter), waits for that rendezvous and
  joins it with torchrun as more ranks of the same training; it never touches the flow run's state. A Prefect
  retry of the train task rendezvouses again, so it waits and joins again, until the flow run is over (it reads
  the run's state from the API: PREFECT__FLOW_RUN_ID, set by the worker).
  Without a flow run id (a hand-run job) it joins one training and exits with torchrun's code.

The Job's successPolicy (index 0 succeeded) ends the other pods on Kubernetes >= 1.31; the state check above is
what ends them on older clusters.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from ..stages.launch import World, join, wait_for_endpoint

ROUND_PAUSE_SECONDS = 10  # after a training ends: node 0's agent is still closing the round it just finished


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    world = World.from_env()
    if world is None:
        raise SystemExit("hubflow.ops.nodes: HUBFLOW_WORLD is not set; this is the command of a multi-node job's pods "
                         "(deployments/pools/kubernetes-gpu-multinode.json)")
    if world.node_rank == 0:
        if not command:
            raise SystemExit("hubflow.ops.nodes: node 0 runs the flow run, but no command was given")
        sys.stdout.flush()
        os.execvp(command[0], command)  # this pod is the flow run, exactly as a one-pod job would be
    return follow(world, os.environ.get("PREFECT__FLOW_RUN_ID"))


def follow(world: World, flow_run_id: str | None) -> int:
    """Join each training node 0 launches, until the flow run is over -> this pod's exit code."""
    log = _log(world)
    run_over = _run_over(flow_run_id) if flow_run_id else (lambda: False)
    if flow_run_id:
        _prefetch_base_model(flow_run_id, log)
    while True:
        log(f"waiting for node 0's rendezvous at {world.endpoint} (job {world.rdzv_id})")
        # Between trainings a SIGTERM is the Job ending (its successPolicy: pod 0, the flow run, succeeded): a clean
        # exit, so the worker, should it watch this pod, does not report a crash. During one it stays fatal.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        if not wait_for_endpoint(world.endpoint, give_up=run_over):
            log(f"flow run {flow_run_id} is over: nothing (more) to join")
            return 0
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = join(world, print)
        log(f"torchrun exited with {code}")
        if not flow_run_id:
            return code
        time.sleep(ROUND_PAUSE_SECONDS)


def _prefetch_base_model(flow_run_id: str, log) -> None:
    """Pull the run's base model (hubflow-train's `base_model` parameter) while node 0 gets ready.

    The joining ranks pull it anyway (a warm cache then answers with no requests), but only once the process group
    exists, while node 0's ranks wait in their first collective (NCCL gives up after 10 minutes by default): a large
    model is better downloaded now. A failure here is the one the ranks would hit, so it ends this pod.
    """
    from prefect.client.orchestration import get_client

    from ..doors import hub
    from ..refs import PinnedRepo

    with get_client(sync_client=True) as client:
        params = client.read_flow_run(flow_run_id).parameters
    if "base_model" not in params:
        return
    model = PinnedRepo.model_validate(params["base_model"])
    log(f"pulling {model.repo_id}@{model.sha[:10]} while node 0 gets ready")
    hub.model_dir(model, bool(params.get("allow_pickle", False)))


def _run_over(flow_run_id: str, every_seconds: float = 15.0):
    """A check of the flow run's state that asks the API at most every `every_seconds`."""
    from prefect.client.orchestration import get_client

    asked = [float("-inf")]

    def over() -> bool:
        if time.monotonic() - asked[0] < every_seconds:
            return False
        asked[0] = time.monotonic()
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
        return state is not None and state.is_final()

    return over


def _log(world: World):
    return lambda msg: print(f"hubflow.ops.nodes [node {world.node_rank} of {world.nodes}]: {msg}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
