"""The `cpu` and `gpu` work pools, created or brought up to date from `deployments/pools/{type}-{cpu,gpu}.json`.

    hubflow pools up                          # process pools (a worker is a host running `prefect worker start`)
    hubflow pools up --type docker            # containers; the gpu template requests every GPU (--gpus all)
    hubflow pools up --type kubernetes        # jobs; the gpu template sets resources.limits["nvidia.com/gpu"]
    hubflow pools up --type kubernetes --multinode   # the gpu pool's jobs are indexed jobs of `nodes` pods that
                                              # train together (kubernetes-gpu-multinode.json, docs/multinode.md)

Talks to the Prefect API in the environment (PREFECT_API_URL). Idempotent: an existing pool of the same type gets
the file's base job template again (so editing a template and rerunning is how it is rolled out); a pool of another
type is an error, since Prefect cannot change a pool's type. One GPU job per host is a worker setting
(`prefect worker start --pool gpu --limit 1`); `--gpu-limit N` caps the whole gpu pool instead.
"""

from __future__ import annotations

import json
from pathlib import Path

POOLS = ("cpu", "gpu")
TYPES = ("process", "docker", "kubernetes")
TEMPLATE_DIR = Path(__file__).resolve().parent.parent.parent / "deployments" / "pools"
DESCRIPTIONS = {
    "cpu": "hubflow: orchestration, Hub I/O, preprocessing, evaluation, publishing (hubflow-pipeline & co).",
    "gpu": "hubflow: training and batch inference (hubflow-train/gpu, hubflow-predict/gpu).",
}


class PoolError(RuntimeError):
    """A pool exists with another type, or a template file is missing."""


def template(pool_type: str, pool: str, multinode: bool = False) -> dict:
    """The base job template for `pool` ('cpu' or 'gpu') on workers of `pool_type` (the gpu pool's multi-node
    variant with `multinode`)."""
    if multinode and (pool_type, pool) != ("kubernetes", "gpu"):
        raise PoolError(f"multi-node training is a kubernetes gpu pool template; not for {pool_type} {pool} pools")
    path = TEMPLATE_DIR / f"{pool_type}-{pool}{'-multinode' if multinode else ''}.json"
    if not path.exists():
        raise PoolError(f"no base job template {path}; pool types with templates: {', '.join(TYPES)}")
    return json.loads(path.read_text())


def pools_up(pool_type: str = "process", gpu_limit: int | None = None, multinode: bool = False) -> dict[str, str]:
    """Create or update the cpu and gpu pools; returns {pool: 'created' | 'updated'}."""
    if multinode and pool_type != "kubernetes":
        raise PoolError(f"--multinode needs --type kubernetes (indexed jobs), not {pool_type}")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists

    done: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for pool in POOLS:
            base = template(pool_type, pool, multinode and pool == "gpu")
            limit = gpu_limit if pool == "gpu" else None
            try:
                client.create_work_pool(WorkPoolCreate(
                    name=pool, type=pool_type, base_job_template=base, description=DESCRIPTIONS[pool],
                    concurrency_limit=limit,
                ))
                done[pool] = "created"
                continue
            except ObjectAlreadyExists:
                pass
            existing = client.read_work_pool(pool)
            if existing.type != pool_type:
                raise PoolError(
                    f"work pool {pool!r} exists with type {existing.type!r}, not {pool_type!r}; Prefect cannot change "
                    f"a pool's type: run `hubflow pools up --type {existing.type}` or `prefect work-pool delete {pool}`"
                )
            update = {"base_job_template": base, "description": DESCRIPTIONS[pool]}
            if limit is not None:  # no flag: leave a limit set earlier (or by hand) alone
                update["concurrency_limit"] = limit
            client.update_work_pool(pool, WorkPoolUpdate(**update))
            done[pool] = "updated"
    return done
