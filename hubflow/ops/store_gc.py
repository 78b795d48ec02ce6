"""`hubflow store gc`: free the artifact store of stage folders that no kept run needs.

    hubflow store gc --store ./.hubflow/store --keep-last 3 --dry-run     # list what would go, and its size
    hubflow store gc --store s3://bucket/hubflow --keep-last 3            # remove it

Kept: every folder that one of the newest N run summaries (`runs/*/summary.json`, `batch/*/summary.json`) points
at, and every folder written to in the last `--grace-minutes` (a run in progress writes its summary last, so its
folders are protected by their age). Removed: the other stage folders (`pull-dataset/<key>`, `preprocess/<key>`,
`train/<key>`, `predict/<key>`, `evaluate/<key>`, `batch-inputs/<key>`, `models/<repo>/<sha>`) and the older run
summaries. A stage folder's name is its Prefect cache key, so its cache record goes with it: a rerun of a removed
run recomputes instead of "hitting" a result whose files are gone, and a rerun of a kept run still hits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..doors import store

STAGES = ("pull-dataset", "preprocess", "train", "predict", "evaluate", "batch-inputs")
SUMMARIES = ("runs", "batch")


@dataclass
class Plan:
    keep_runs: list[str] = field(default_factory=list)
    drop_runs: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)  # stage folders, relative to the store
    protected: list[str] = field(default_factory=list)  # unreferenced but written to recently
    freed_bytes: int = 0


def plan(root: str, keep_last: int, grace_minutes: float = 60.0) -> Plan:
    """What `gc` would do, without doing it."""
    runs = sorted(((store.modified(store.join(root, kind, run_id, "summary.json")), f"{kind}/{run_id}")
                   for kind in SUMMARIES for run_id in sorted(store.ls(store.join(root, kind)))
                   if store.exists(store.join(root, kind, run_id, "summary.json"))), reverse=True)
    result = Plan(keep_runs=[r for _, r in runs[:keep_last]], drop_runs=[r for _, r in runs[keep_last:]])
    needed = set()
    for run in result.keep_runs:
        needed |= _referenced(root, store.read_json(store.join(root, run, "summary.json")))
    cutoff = time.time() - grace_minutes * 60
    for folder in _stage_folders(root):
        if folder in needed:
            continue
        if store.modified(store.join(root, folder)) > cutoff:
            result.protected.append(folder)
            continue
        result.drop.append(folder)
        result.freed_bytes += store.size(store.join(root, folder))
    for run in result.drop_runs:
        result.freed_bytes += store.size(store.join(root, run))
    return result


def collect(root: str, keep_last: int, grace_minutes: float = 60.0, dry_run: bool = False) -> Plan:
    """Carry out `plan`: remove the folders and summaries, and the Prefect cache records named like the folders."""
    todo = plan(root, keep_last, grace_minutes)
    if dry_run:
        return todo
    for folder in todo.drop:
        store.remove(store.join(root, folder))
        _forget_cache_record(folder)
    for run in todo.drop_runs:
        store.remove(store.join(root, run))
    return todo


def _stage_folders(root: str) -> list[str]:
    folders = [f"{stage}/{key}" for stage in STAGES for key in sorted(store.ls(store.join(root, stage)))]
    for repo in sorted(store.ls(store.join(root, "models"))):  # batch inference's copies of published models
        folders += [f"models/{repo}/{sha}" for sha in sorted(store.ls(store.join(root, "models", repo)))]
    return folders


def _referenced(root: str, summary: dict) -> set[str]:
    """The stage folders (relative to the store) whose URIs a run summary holds, at any depth."""
    base = store.join(root).rstrip("/") + "/"
    found: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value.startswith(base):
            parts = value[len(base):].split("/")
            depth = 3 if parts[0] == "models" else 2
            if len(parts) >= depth:
                found.add("/".join(parts[:depth]))

    walk(summary)
    return found


def _forget_cache_record(folder: str) -> None:
    """Remove the Prefect result record whose key is `{stage}-{key}` (tasks/common.py names both alike)."""
    stage, _, key = folder.partition("/")
    if stage not in STAGES or stage == "batch-inputs":
        return
    from prefect.results import get_default_result_storage

    storage = get_default_result_storage(_sync=True)
    basepath = getattr(storage, "basepath", None)
    if basepath:
        store.remove(store.join(str(basepath), f"{stage}-{key}"))


def report(todo: Plan, dry_run: bool) -> str:
    verb = "would remove" if dry_run else "removed"
    lines = [f"kept {len(todo.keep_runs)} runs: {', '.join(todo.keep_runs) or '—'}",
             f"{verb} {len(todo.drop)} stage folders and {len(todo.drop_runs)} run summaries, "
             f"{todo.freed_bytes / 1e6:.1f} MB"]
    lines += [f"  {verb}: {folder}" for folder in todo.drop + todo.drop_runs]
    if todo.protected:
        lines.append(f"left {len(todo.protected)} folders written to in the grace period (a run in progress?): "
                     + ", ".join(todo.protected))
    return "\n".join(lines)
