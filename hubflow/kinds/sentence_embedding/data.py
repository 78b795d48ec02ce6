"""Sentence-embedding data: raw pair splits -> tokenized pairs for training, and retrieval rows for the test.

    check_raw(splits, settings)                       {split: Dataset} -> ValueError naming the split and column
    build(tables, settings, model_dir, cfg, splits)   {split: pa.Table} -> DatasetDict train/validation/test
    prepare(raw, model_dir, cfg, data, settings, out_uri, facts) -> TokenizedRef (build + save through the store)
    corpus_rows(table, settings, model_dir, max_length)   a text + id table -> rows to embed (id, text, input_ids)
    prepare_inference(ds, settings, split, model_dir, facts, out_root, max_samples) -> TokenizedRef (one split)

Pair splits (train, validation) hold `input_ids` (the anchor's: the training loop groups batches by its length),
`positive_input_ids`, [`negative_input_ids`], [`score`], `positive_key` (one id per distinct positive text), `row_id`
and the texts. The test split is retrieval rows: the queries (role `query`, `relevant_ids`) then the corpus (role
`corpus`), each with `id`, `text`, `input_ids`. A test split with `relevant_column` searches the `corpus_split`; a
test split of pairs searches its own distinct positives. A missing validation/test split is carved from train, by
positive text, so no positive is shared across splits.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...doors import store
from ...tokenize import arrow_encoder, check_text, sha, tokenizer_hash
from .settings import EmbeddingData

PREPROCESS_VERSION = 1  # bump when `build` changes its output, so old fingerprints stop matching
_SETTING = {"anchor": "anchor_column", "positive": "positive_column", "negative": "negative_column",
            "score": "score_column"}


def check_raw(splits: dict, settings: EmbeddingData, test_split: str | None = None) -> None:
    """{split: Dataset or pa.Table} -> raises one line naming the split and column for a missing column, an empty
    split, or text that is not strings or has missing values. The corpus split and a test split with relevance
    lists are checked for their own columns."""
    for split, ds in splits.items():
        table = ds if isinstance(ds, pa.Table) else ds.with_format("arrow")[:]
        if table.num_rows == 0:
            raise ValueError(f"split {split!r} is empty")
        for setting, col in _needed(split, table.column_names, settings, test_split).items():
            if col not in table.column_names:
                raise ValueError(f"split {split!r} has no column {col!r} ({setting}); available columns: "
                                 f"{table.column_names}")
            if setting in ("anchor_column", "positive_column", "negative_column", "corpus_text_column"):
                check_text({split: (table.column(col), None)}, col)
        if settings.score_column and settings.score_column in table.column_names:
            scores = table.column(settings.score_column)
            if not pa.types.is_floating(scores.type) and not pa.types.is_integer(scores.type):
                raise ValueError(f"score column {settings.score_column!r} of split {split!r} holds {scores.type}, "
                                 "not numbers")


def build(tables: dict[str, pa.Table], settings: EmbeddingData, model_dir: str, cfg,
          train_split: str = "train", validation_split: str | None = "validation",
          test_split: str | None = "test"):
    """Raw tables + a fast tokenizer -> DatasetDict(train, validation, test) in memory (see the module docstring)."""
    from datasets import Dataset, DatasetDict
    from datasets.table import InMemoryTable
    from transformers import AutoTokenizer

    if train_split not in tables:
        raise ValueError(f"train split {train_split!r} not among the raw splits {sorted(tables)}")
    check_raw(tables, settings, test_split)
    roles = {"validation": validation_split, "test": test_split}
    parts = {"train": tables[train_split]}
    parts.update({role: tables[s] for role, s in roles.items() if s and s in tables})
    carve = {role: getattr(cfg, f"{role}_fraction") for role in roles if role not in parts}
    if carve:
        parts.update(_carve(tables[train_split], settings.positive_column, carve, cfg.split_seed))

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.is_fast:
        raise ValueError(f"{model_dir} has no fast tokenizer (tokenizer.json); preprocess needs one for batched speed")
    encode = arrow_encoder(tokenizer, cfg.max_length,
                           probe=parts["train"].column(settings.anchor_column)[:32].to_pylist())
    corpus = tables.get(settings.corpus_split)
    out = DatasetDict()
    for role in ("train", "validation", "test"):
        if role == "test":
            table = _retrieval_rows(parts["test"], corpus, settings, encode)
        else:
            table = _pair_rows(parts[role], settings, encode)
        out[role] = Dataset(InMemoryTable(table), fingerprint=sha([PREPROCESS_VERSION, role, table.num_rows])[:16])
    return out


def prepare(raw, model_dir: str, cfg, data, settings: EmbeddingData, out_uri: str, facts):
    """RawDataRef (`{uri}/{split}.parquet`) -> `build` saved at out_uri (store.save_dataset)
    -> TokenizedRef carrying `facts`."""
    from ...refs import TokenizedRef

    fingerprint = sha({"v": PREPROCESS_VERSION, "raw": raw.fingerprint, "tokenizer": tokenizer_hash(model_dir),
                       "preprocess": cfg.model_dump(mode="json"), "settings": settings.model_dump(mode="json"),
                       "splits": [data.train_split, data.validation_split, data.test_split]})
    tables = {s: store.read_parquet(store.join(raw.uri, f"{s}.parquet")) for s in raw.splits}
    corpus_uri = store.join(raw.uri, f"{settings.corpus_split}.parquet")
    if settings.corpus_split not in tables and store.exists(corpus_uri):
        tables[settings.corpus_split] = store.read_parquet(corpus_uri)
    out = build(tables, settings, model_dir, cfg, data.train_split, data.validation_split, data.test_split)
    uri = store.save_dataset(out, store.join(out_uri))
    return TokenizedRef(uri=uri, fingerprint=fingerprint, splits={s: len(d) for s, d in out.items()}, facts=facts)


def corpus_rows(table: pa.Table, settings: EmbeddingData, model_dir: str, max_length: int,
                split: str = "corpus") -> pa.Table:
    """A corpus table (text + id columns; no id column: the row index) -> id (string), text, row_id, input_ids."""
    from transformers import AutoTokenizer

    needed = {"corpus_text_column": settings.corpus_text_column}
    for setting, col in needed.items():
        if col not in table.column_names:
            raise ValueError(f"split {split!r} has no column {col!r} ({setting}); available columns: "
                             f"{table.column_names}")
    if table.num_rows == 0:
        raise ValueError(f"split {split!r} is empty")
    text = table.column(settings.corpus_text_column)
    check_text({split: (text, None)}, settings.corpus_text_column)
    ids = (table.column(settings.corpus_id_column).cast(pa.string()) if settings.corpus_id_column in table.column_names
           else pa.array([str(i) for i in range(table.num_rows)]))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encode = arrow_encoder(tokenizer, max_length, probe=text[:32].to_pylist())
    out = pa.table({"id": ids, "text": text, "row_id": pa.array(np.arange(table.num_rows), pa.int64())})
    return out.append_column("input_ids", _ids(encode, text))


def prepare_inference(ds, settings: EmbeddingData, split: str, model_dir: str, facts, out_root: str,
                      max_samples: int | None = None):
    """A dataset split of texts (corpus_text_column; ids from corpus_id_column, else the row index) -> a one-split
    DatasetDict at `{out_root}/{fingerprint}` -> TokenizedRef. The fingerprint hashes the texts, ids, tokenizer and
    max_length, so the same inputs are tokenized once and reused."""
    from datasets import Dataset, DatasetDict
    from datasets.table import InMemoryTable

    from ...refs import TokenizedRef
    from ...tokenize import texts_digest

    if max_samples:
        ds = ds.select(range(min(max_samples, len(ds))))
    rows = corpus_rows(ds.with_format("arrow")[:], settings, model_dir, facts.max_length, split)
    fingerprint = sha({"v": PREPROCESS_VERSION, "kind": "inference", "texts": texts_digest(rows["text"]),
                       "ids": texts_digest(rows["id"]), "tokenizer": tokenizer_hash(model_dir),
                       "max_length": facts.max_length, "split": split})
    uri = store.join(out_root, fingerprint[:24])
    if not store.has_dataset(uri):
        store.save_dataset(DatasetDict({split: Dataset(InMemoryTable(rows), fingerprint=fingerprint[:16])}), uri)
    return TokenizedRef(uri=uri, fingerprint=fingerprint, splits={split: rows.num_rows}, facts=facts)


# ----- helpers -------------------------------------------------------------------------------------------------------


def _needed(split: str, columns: list[str], s: EmbeddingData, test_split: str | None) -> dict[str, str]:
    """{setting name: column} a split must hold."""
    if split == s.corpus_split:
        return {"corpus_id_column": s.corpus_id_column, "corpus_text_column": s.corpus_text_column}
    if split == test_split and s.relevant_column in columns:
        return {"anchor_column": s.anchor_column, "relevant_column": s.relevant_column}
    return {_SETTING[role]: col for role, col in s.pair_columns().items()}


def _ids(encode, text: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """Texts -> their token ids (list<int32>), tokenized in arrow batches of 4096 by the Rust tokenizer."""
    text = text.cast(pa.large_string())
    chunks = [encode(pa.table({"text": text[i:i + 4096]})).column("input_ids").combine_chunks()
              for i in range(0, len(text), 4096)]
    return pa.chunked_array(chunks, pa.list_(pa.int32()))


def _pair_rows(table: pa.Table, s: EmbeddingData, encode) -> pa.Table:
    positives = table.column(s.positive_column)
    distinct = pc.unique(positives)
    out = {"text": table.column(s.anchor_column), "positive_text": positives,
           "input_ids": _ids(encode, table.column(s.anchor_column)), "positive_input_ids": _ids(encode, positives),
           "positive_key": pc.index_in(positives, value_set=distinct).cast(pa.int64()),
           "row_id": pa.array(np.arange(table.num_rows), pa.int64())}
    if s.negative_column:
        out["negative_text"] = table.column(s.negative_column)
        out["negative_input_ids"] = _ids(encode, out["negative_text"])
    if s.score_column:
        out["score"] = table.column(s.score_column).cast(pa.float32())
    return pa.table(out)


def _retrieval_rows(test: pa.Table, corpus: pa.Table | None, s: EmbeddingData, encode) -> pa.Table:
    """Test queries, then the corpus they search, as one table of rows to embed."""
    anchors = test.column(s.anchor_column)
    if s.relevant_column in test.column_names and corpus is not None:
        doc_ids = corpus.column(s.corpus_id_column).cast(pa.string())
        doc_text = corpus.column(s.corpus_text_column)
        relevant = test.column(s.relevant_column).cast(pa.list_(pa.string()))
    else:  # a pair split: its distinct positives (and hard negatives, as distractors) are the corpus
        texts = [test.column(s.positive_column)] + ([test.column(s.negative_column)] if s.negative_column else [])
        doc_text = pc.unique(pa.chunked_array([c for t in texts for c in t.chunks], pa.string()))
        doc_ids = pa.array([f"d{i}" for i in range(len(doc_text))])
        relevant = pc.take(doc_ids, pc.index_in(test.column(s.positive_column), value_set=doc_text)).combine_chunks()
        relevant = pa.ListArray.from_arrays(pa.array(np.arange(len(relevant) + 1), pa.int32()), relevant)
    n_q, n_d = test.num_rows, len(doc_text)
    text = pa.chunked_array([anchors.cast(pa.string()), pa.chunked_array([doc_text]).cast(pa.string())])
    return pa.table({
        "id": pa.concat_arrays([pa.array([f"q{i}" for i in range(n_q)]), pa.chunked_array([doc_ids]).combine_chunks()]),
        "role": pa.array(["query"] * n_q + ["corpus"] * n_d),
        "relevant_ids": pa.chunked_array([pa.chunked_array([relevant]).combine_chunks(),
                                          pa.array([[]] * n_d, pa.list_(pa.string()))]),
        "text": text, "input_ids": _ids(encode, text),
        "row_id": pa.array(np.arange(n_q + n_d), pa.int64()),
    })


def _carve(train: pa.Table, positive_column: str, fractions: dict[str, float], seed: int) -> dict[str, pa.Table]:
    """Train pairs -> {"train": rest, role: carved}: whole groups of pairs sharing a positive text, seeded."""
    groups = pc.index_in(train.column(positive_column), value_set=pc.unique(train.column(positive_column))).to_numpy()
    n_groups = int(groups.max()) + 1
    if n_groups < len(fractions) + 1:
        raise ValueError(f"train split has {n_groups} distinct positives, too few to carve {sorted(fractions)} from it")
    perm = np.random.default_rng(seed).permutation(n_groups)
    out, start = {}, 0
    for role, frac in fractions.items():
        k = max(1, round(frac * n_groups))
        out[role] = train.take(np.flatnonzero(np.isin(groups, perm[start:start + k])))
        start += k
    out["train"] = train.take(np.flatnonzero(np.isin(groups, perm[start:])))
    return out
