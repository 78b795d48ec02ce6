"""A semantic-search demo for one sentence-embedding model at one commit: hubflow's Space template.

Runs as a Hugging Face Space (gradio SDK) or on a laptop (`hubflow space preview`). Self-contained: a Space has only
its own files and requirements.txt, so nothing here imports hubflow. Everything comes from the environment:

    MODEL_ID         a Hub model repo id (sentence-transformers format), or a local folder (preview of a run)
    MODEL_REVISION   the commit sha to serve (pinned: the demo never drifts to a newer push)
    CORPUS           a Hub dataset repo id, or a local folder, holding the documents to search (`text`, optional
                     `id`; rows with a `role` column are searched only where role == "corpus", as in hubflow's
                     published test predictions). Optional: without it the app only embeds.
    CORPUS_REVISION  the dataset commit to read; CORPUS_SPLIT its split (default: the first)
    DATASET_ID, DATASET_REVISION   the predictions hubflow published with the model: the corpus when CORPUS is unset
    MAX_CORPUS       documents embedded at start-up at most (default 5000)
    EXAMPLES         JSON list of example queries (optional)
    HF_TOKEN         a Space *secret*, set only when the model or dataset repo is private

Two endpoints: `/search` (query -> the closest documents) and `/embed` (text -> its vector as JSON, what hubflow's
deploy check compares with the batch vectors).

    MODEL_ID=ns/model MODEL_REVISION=<sha> CORPUS=ns/data python app.py
"""

import json
import os
import sys

import gradio as gr
import torch
from sentence_transformers import SentenceTransformer

MODEL_ID = os.environ["MODEL_ID"]
MODEL_REVISION = os.environ.get("MODEL_REVISION") or None
CORPUS = os.environ.get("CORPUS") or os.environ.get("DATASET_ID") or None
CORPUS_REVISION = os.environ.get("CORPUS_REVISION") or os.environ.get("DATASET_REVISION") or None
CORPUS_SPLIT = os.environ.get("CORPUS_SPLIT") or None
MAX_CORPUS = int(os.environ.get("MAX_CORPUS") or 5000)
EXAMPLES = json.loads(os.environ.get("EXAMPLES") or "[]")
TOKEN = os.environ.get("HF_TOKEN") or None
TOP_K = 5


def load_model() -> SentenceTransformer:
    """The model at the pinned revision; a failure ends the app with one readable line (the Space log)."""
    local = os.path.isdir(MODEL_ID)
    try:
        return SentenceTransformer(MODEL_ID, device="cpu", **({} if local else
                                                               {"revision": MODEL_REVISION, "token": TOKEN}))
    except Exception as err:  # noqa: BLE001 - whatever went wrong, the Space's error message must say it
        where = MODEL_ID if local else f"{MODEL_ID}@{MODEL_REVISION or 'main'}"
        sys.exit(f"hubflow demo: cannot load model {where}: {type(err).__name__}: {err}")


def load_corpus() -> tuple[list[str], list[str]]:
    """(ids, texts) of the documents to search; empty without CORPUS."""
    if not CORPUS:
        return [], []
    from datasets import load_dataset, load_from_disk

    try:
        if os.path.isdir(CORPUS) and os.path.exists(os.path.join(CORPUS, "dataset_dict.json")):
            dsd = load_from_disk(CORPUS)
        else:
            dsd = load_dataset(CORPUS, revision=CORPUS_REVISION, token=TOKEN)
        ds = dsd[CORPUS_SPLIT or next(iter(dsd))]
        if "role" in ds.column_names:
            ds = ds.filter(lambda role: role == "corpus", input_columns="role")
        ds = ds.select(range(min(MAX_CORPUS, len(ds))))
        texts = ds["text"]
        ids = [str(i) for i in ds["id"]] if "id" in ds.column_names else [str(i) for i in range(len(texts))]
    except Exception as err:  # noqa: BLE001
        sys.exit(f"hubflow demo: cannot read corpus {CORPUS}@{CORPUS_REVISION or 'main'}: {type(err).__name__}: {err}")
    return ids, texts


MODEL = load_model()
IDS, TEXTS = load_corpus()
# Embedded once at start-up, unit length: a query's cosine similarity to every document is one matrix product.
DOCS = MODEL.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True) if TEXTS else None


MAX_BATCH = 32  # concurrent callers' queries that gradio hands to one call


@torch.inference_mode()
def embed(texts: list[str]) -> list[list[str]]:
    """Texts waiting together (gradio's batch: one per caller) -> ([vector as a JSON list, ...],): what the model's
    sentence-transformers encode gives for each (it sorts by length and pads per batch itself)."""
    vectors = MODEL.encode([t or "" for t in texts], convert_to_numpy=True)
    return [[json.dumps(v.tolist()) for v in vectors]]


@torch.inference_mode()
def search(queries: list[str]) -> list[list[list[list]]]:
    """Queries waiting together -> ([the TOP_K closest documents: [rank, score, id, text] rows, ...],)."""
    if DOCS is None:
        return [[[] for _ in queries]]
    q = MODEL.encode([t or "" for t in queries], convert_to_tensor=True, normalize_embeddings=True)
    top = torch.topk(q @ DOCS.T, min(TOP_K, len(TEXTS)), dim=1)
    return [[[[r + 1, round(float(s), 4), IDS[i], TEXTS[i]] for r, (s, i) in enumerate(zip(vals, idx))]
             for vals, idx in zip(top.values.tolist(), top.indices.tolist())]]


def build_demo() -> gr.Blocks:
    revision = f" at `{MODEL_REVISION[:10]}`" if MODEL_REVISION and not os.path.isdir(MODEL_ID) else ""
    with gr.Blocks(title=f"{MODEL_ID} demo") as demo:
        gr.Markdown(f"## Semantic search with `{MODEL_ID}`{revision}\n"
                    + (f"{len(TEXTS)} documents from `{CORPUS}`." if TEXTS else "No corpus configured."))
        query = gr.Textbox(label="Query", lines=2, placeholder="Describe what you are looking for")
        button = gr.Button("Search", variant="primary")
        hits = gr.Dataframe(headers=["rank", "score", "id", "text"], label="Closest documents", wrap=True)
        # batch=True: callers waiting in the queue are encoded together (each still sends one query).
        gr.on([button.click, query.submit], search, inputs=query, outputs=hits, api_name="search",
              batch=True, max_batch_size=MAX_BATCH)
        vector = gr.Textbox(visible=False)
        gr.Button("Embed", visible=False).click(embed, inputs=query, outputs=vector, api_name="embed",
                                                batch=True, max_batch_size=MAX_BATCH)
        if EXAMPLES:
            gr.Examples([[e] for e in EXAMPLES], inputs=query)
    return demo


if __name__ == "__main__":
    # Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (set by the Space runtime or the preview).
    build_demo().queue().launch()
