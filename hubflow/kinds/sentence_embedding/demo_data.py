"""The offline sentence-embedding demo: customer questions paired with the support ticket that answers them.

    build_retrieval_demo(seed, sizes)   -> DatasetDict: train/validation (anchor, positive), test (anchor,
                                           relevant_ids), corpus (id, text)
    write_retrieval_demo(out_dir, seed) -> the Hub dataset layout (data/*.parquet + README.md)

The tickets are hubflow's demo support tickets (hubflow.demo_data, seed-deterministic). Each query is a terse
paraphrase of one ticket, as someone would type it into a help-centre search box: greetings, sign-offs and filler
dropped, some words swapped for synonyms, a question frame added. Queries keep a ticket's specifics (order numbers,
products, amounts), so the right ticket is findable but not by copying its text. The test queries' tickets form the
corpus (with the validation tickets as distractors) and never appear in training.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

SIZES = {"train": 2000, "validation": 200, "test": 400}  # tickets per split of hubflow.demo_data (its defaults)

_STOP = frozenset({
    "a", "an", "the", "i", "i'm", "im", "my", "me", "we", "our", "you", "your", "u", "it", "its", "it's", "this",
    "that", "these", "those", "is", "are", "was", "were", "be", "been", "am", "to", "of", "for", "on", "in", "at",
    "by", "with", "and", "or", "but", "so", "if", "as", "just", "really", "still", "even", "also", "very", "any",
    "some", "there", "here", "have", "has", "had", "do", "does", "did", "can", "could", "would", "should", "will",
    "please", "pls", "thanks", "thx", "thank", "hi", "hello", "hey", "dear", "team", "support", "regards", "best",
    "cheers"
})  # dropped from a ticket when it becomes a query
_SYNONYMS = {"charged": "billed", "billed": "charged", "refund": "money back", "package": "parcel", "parcel": "package",
             "order": "purchase", "arrived": "came", "delivered": "dropped off", "broken": "damaged",
             "damaged": "broken", "password": "login", "account": "profile", "app": "application",
             "crashes": "keeps crashing", "won't": "will not", "cancel": "stop", "invoice": "receipt",
             "email": "e-mail", "tracking": "shipment tracking", "wrong": "incorrect", "missing": "not included"}
_FRAMES = ["{q}", "{q}?", "how do i fix: {q}", "help with {q}", "{q} - what can i do", "question about {q}",
           "why {q}", "{q}, any advice"]
_GREETING = re.compile(r"^(hi|hello|hey|good (morning|afternoon)|dear support)\b[^,]*,\s*", re.IGNORECASE)
_SIGNOFF = re.compile(r"\s*(thanks|thank you|thx|cheers|regards|best|- )[^.!?]*[.!?]?\s*$", re.IGNORECASE)


def paraphrase(ticket: str, rng: random.Random) -> str:
    """A ticket -> a short search-style query about it (deterministic given the rng's state)."""
    core = _SIGNOFF.sub("", _GREETING.sub("", ticket.strip()))
    sentence = re.split(r"(?<=[.!?])\s+", core)[0] or core  # the request itself: the ticket's first sentence
    words = [w.strip(".,!?'\"()").lower() for w in sentence.split()]
    content = [w for w in words if w and w not in _STOP]
    keep = [w for w in content if rng.random() < 0.8] or content[:3] or words[:3]
    keep = [(_SYNONYMS.get(w, w) if rng.random() < 0.5 else w) for w in keep]
    return rng.choice(_FRAMES).format(q=" ".join(keep[:12]))


def build_retrieval_demo(seed: int = 0, sizes: dict[str, int] | None = None):
    """seed -> DatasetDict(train, validation, test, corpus); `sizes` caps the tickets used per split (smaller demos)."""
    from datasets import Dataset, DatasetDict, Features, List, Value

    from ...demo_data import build_demo_dataset

    tickets = build_demo_dataset(seed)
    sizes = {s: min(n, len(tickets[s])) for s, n in (sizes or SIZES).items()}
    rng = random.Random(seed * 7919 + 1)
    texts = {s: tickets[s]["text"][:n] for s, n in sizes.items()}
    out = {}
    for split in ("train", "validation"):
        # Two queries per training ticket: in-batch negatives see several phrasings of one need.
        per = 2 if split == "train" else 1
        anchors = [paraphrase(t, rng) for t in texts[split] for _ in range(per)]
        positives = [t for t in texts[split] for _ in range(per)]
        out[split] = Dataset.from_dict({"anchor": anchors, "positive": positives})
    ids = [f"ticket-{i:05d}" for i in range(sizes["test"] + sizes["validation"])]
    corpus_text = texts["test"] + texts["validation"]  # the validation tickets are distractors in the test corpus
    out["corpus"] = Dataset.from_dict({"id": ids, "text": corpus_text})
    out["test"] = Dataset.from_dict(
        {"anchor": [paraphrase(t, rng) for t in texts["test"]], "relevant_ids": [[i] for i in ids[:sizes["test"]]]},
        features=Features({"anchor": Value("string"), "relevant_ids": List(Value("string"))}))
    return DatasetDict(out)


def write_retrieval_demo(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Folder -> `data/{split}-00000-of-00001.parquet` for train, validation, test, corpus + README.md."""
    from ...demo_data import write_hub_layout

    dsdict = build_retrieval_demo(seed)
    counts = ", ".join(f"{s}: {len(d)} rows" for s, d in dsdict.items())
    card = f"""---
language:
- en
license: cc0-1.0
task_categories:
- sentence-similarity
pretty_name: hubflow demo support search
---

# hubflow demo: support search

Customer questions paired with the support ticket that answers them ({counts}). `train`/`validation`: `anchor`
(question), `positive` (ticket). `test`: `anchor` and `relevant_ids` into `corpus` (`id`, `text`). Generated
offline by `hubflow.kinds.sentence_embedding.demo_data.build_retrieval_demo(seed={seed})`.
"""
    return write_hub_layout(dsdict, out_dir, card)
