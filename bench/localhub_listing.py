"""localhub's listing at scale: a filtered, sorted `list_models(limit=50)` page over 50,000 repos.

    python -m bench.localhub_listing              # 50,000 repos, 20 timed pages per query
    python -m bench.localhub_listing --repos 5000

The repos are written straight into a fresh data dir's SQLite (one transaction: repos, their initial commit and
`main`, tags, likes; ~seconds) before the server starts, then the real `HfApi.list_models` asks each query of
QUERIES through HTTP on loopback. Prints the median and worst wall time per query (client call included).
Target: < 200 ms per page on 2 cores. Figures: docs/localhub.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from localhub import LocalHub, free_port
from localhub.storage import Storage

LIBRARIES = ("transformers", "sentence-transformers", "peft", "timm", "diffusers")
PIPELINES = ("text-classification", "token-classification", "text-generation", "fill-mask", "image-classification")
LICENSES = ("mit", "apache-2.0", "cc-by-4.0", "other")
QUERIES = {  # name -> list_models kwargs (limit=50 added)
    "tag+license, by likes": {"filter": ["transformers", "license:mit"], "sort": "likes"},
    "pipeline_tag, by last_modified": {"pipeline_tag": "text-classification", "sort": "last_modified"},
    "rare tag, by downloads": {"filter": "rare-0", "sort": "downloads"},
    "author + search, by created_at": {"author": "user-7", "search": "model-1", "sort": "created_at"},
    "no filter, by likes": {"sort": "likes"},
}


def seed_repos(data_dir: Path, n: int, owner: str = "user", seed: int = 0) -> None:
    """`n` public models `{owner}-{i % 100}/model-{i}` with card-like tags and random likes, in one transaction."""
    rng = random.Random(seed)
    Storage(data_dir).db.close()  # the schema, as the server makes it
    db = sqlite3.connect(data_dir / "hub.db", isolation_level=None)
    now = time.time()
    db.execute("BEGIN")
    for i in range(n):
        created = now - rng.uniform(0, 3e7)
        rid = db.execute("INSERT INTO repos(type, namespace, name, private, created_at) VALUES ('model',?,?,0,?)",
                         (f"{owner}-{i % 100}", f"model-{i}", created)).lastrowid
        oid = hashlib.sha1(f"seed-{i}".encode()).hexdigest()
        db.execute("INSERT INTO commits(oid, rid, parent, title, message, author, date) "
                   "VALUES (?,?,NULL,'seed','',?,?)",
                   (oid, rid, owner, created + rng.uniform(0, 1e6)))
        db.execute("INSERT INTO refs(rid, kind, name, oid) VALUES (?, 'branch', 'main', ?)", (rid, oid))
        library, pipeline = rng.choice(LIBRARIES), rng.choice(PIPELINES)
        tags = [library, pipeline, f"license:{rng.choice(LICENSES)}"] + ([f"rare-{i % 7}"] if i % 500 == 0 else [])
        db.execute("UPDATE listing SET tags=?, pipeline_tag=?, library=?, likes=?, downloads=? WHERE rid=?",
                   (json.dumps(tags), pipeline, library, int(rng.paretovariate(1.5)), rng.randrange(10_000), rid))
        db.executemany("INSERT INTO repo_tags(tag, rid) VALUES (?,?)", [(t, rid) for t in tags])
    db.execute("COMMIT")
    db.close()


def time_queries(url: str, rounds: int) -> dict[str, tuple[float, float, int]]:
    """{query: (median s, worst s, items)} of `rounds` calls of each query through HfApi."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=url, token=False)
    out = {}
    for name, kwargs in QUERIES.items():
        items = list(api.list_models(limit=50, **kwargs))  # warm-up (and the count)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            list(api.list_models(limit=50, **kwargs))
            times.append(time.perf_counter() - t0)
        out[name] = (statistics.median(times), max(times), len(items))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repos", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="localhub-listing-"))
    try:
        t0 = time.perf_counter()
        seed_repos(work / "hub", args.repos)
        print(f"seeded {args.repos} repos in {time.perf_counter() - t0:.1f} s")
        hub = LocalHub(work / "hub", users={"u": ("t", "write")}, port=free_port()).start()
        try:
            for name, (median, worst, items) in time_queries(hub.url, args.rounds).items():
                print(f"{name:<34} median {1000 * median:6.1f} ms  worst {1000 * worst:6.1f} ms  ({items} items)")
        finally:
            hub.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
