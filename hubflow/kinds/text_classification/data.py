"""Text classification data: the label space, deterministic carving, and tokenization for training and inference.

    check_raw(splits, data)                         raw text/label columns -> ValueError naming split and column
    label_names_of(raw)                             RawDataRef -> class names, index = label id
    prepare(raw, model_dir, cfg, data, out_uri)     raw parquet splits -> TokenizedRef (train/validation/test)
    prepare_inference(ds, text_column, split, model_dir, facts, out_root, max_samples) -> TokenizedRef (one split)

Raw splits keep their source names (`{raw.uri}/{split}.parquet`); `prepare` maps them onto `train`, `validation`
and `test`, carving the missing ones from train (stratified). Label work is done on whole Arrow columns, never per row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...config import DataConfig, PreprocessConfig
from ...doors import store
from ...refs import ModelFacts, RawDataRef, TokenizedRef
from ...tokenize import arrow_encoder, check_text, sha, texts_digest, tokenizer_hash
from .settings import ClassifierFacts

PREPROCESS_VERSION = 1  # bump when `prepare` changes its output, so old fingerprints stop matching


def check_raw(splits: dict, data: DataConfig) -> None:
    """{split: Dataset with text + label columns} -> raises on bad text, missing labels, unusable label types or
    single-class labels, before anything is written."""
    columns = {}
    for s, ds in splits.items():
        table = ds.with_format("arrow")[:]  # the arrow format honours an indices mapping (a selected dataset)
        columns[s] = (table.column(data.text_column), table.column(data.label_column))
    check_text(columns, data.text_column)
    _label_space({s: labels for s, (_, labels) in columns.items()},
                 {s: ds.features[data.label_column] for s, ds in splits.items()}, data.label_column, data.train_split)


def label_names_of(raw: RawDataRef) -> list[str]:
    """RawDataRef -> class names (ClassLabel names, else sorted unique values as strings); index = label id."""
    tables, features = _read_raw(raw)
    train = next(iter(raw.splits))  # the pull lists the train split first
    return _label_space({s: t.column(raw.columns["label"]) for s, t in tables.items()},
                        {s: f[raw.columns["label"]] for s, f in features.items()}, raw.columns["label"], train)[0]


def prepare(
    raw: RawDataRef, model_dir: str, cfg: PreprocessConfig, data_cfg: DataConfig, out_uri: str
) -> TokenizedRef:
    """Raw parquet splits + a fast tokenizer -> a DatasetDict (train/validation/test) saved at out_uri.

    Columns: input_ids, attention_mask (truncated to cfg.max_length, unpadded), labels (int), row_id (row index in
    its split) and text. Missing validation/test splits are carved from train, stratified, seeded by split_seed.
    """
    from datasets import Dataset, DatasetDict
    from datasets.table import InMemoryTable
    from transformers import AutoTokenizer

    fingerprint = sha({"v": PREPROCESS_VERSION, "raw": raw.fingerprint, "tokenizer": tokenizer_hash(model_dir),
                        "preprocess": cfg.model_dump(mode="json"),
                        "splits": [data_cfg.train_split, data_cfg.validation_split, data_cfg.test_split]})
    tables, features = _read_raw(raw)
    if data_cfg.train_split not in tables:
        raise ValueError(f"train split {data_cfg.train_split!r} not among the raw splits {sorted(tables)} at {raw.uri}")
    label_cols = {s: t.column(raw.columns["label"]) for s, t in tables.items()}
    names, values = _label_space(label_cols, {s: f[raw.columns["label"]] for s, f in features.items()},
                                 raw.columns["label"], data_cfg.train_split)
    ids = {s: _label_ids(col, values) for s, col in label_cols.items()}
    texts = {s: t.column(raw.columns["text"]) for s, t in tables.items()}

    roles = {"validation": data_cfg.validation_split, "test": data_cfg.test_split}
    present = {role: s for role, s in roles.items() if s is not None and s in tables}
    fractions = {role: getattr(cfg, f"{role}_fraction") for role in roles if role not in present}
    train_ids, train_text = ids[data_cfg.train_split], texts[data_cfg.train_split]
    parts = {role: (texts[s], ids[s]) for role, s in present.items()}
    for role, idx in _carve(train_ids, fractions, cfg.split_seed).items():
        parts[role] = (train_text.take(pa.array(idx)), train_ids[idx])

    _check_positions(model_dir, cfg.max_length)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.is_fast:
        raise ValueError(f"{model_dir} has no fast tokenizer (tokenizer.json); preprocess needs one for batched speed")

    encode = arrow_encoder(tokenizer, cfg.max_length, probe=parts["train"][0][:32].to_pylist())
    out = DatasetDict()
    for role in ("train", "validation", "test"):
        text, labels = parts[role]
        table = pa.table({"text": text, "labels": pa.array(labels, pa.int64()),
                          "row_id": pa.array(np.arange(len(labels)), pa.int64())})
        ds = Dataset(InMemoryTable(table), fingerprint=sha([fingerprint, role])[:16])
        # Batches arrive and leave as Arrow tables; new_fingerprint spares datasets from dill-hashing the tokenizer
        # (slower than tokenizing a few thousand rows), and ours already covers the tokenizer and the config.
        out[role] = ds.with_format("arrow").map(
            encode, batched=True, batch_size=4096, writer_batch_size=4096,
            new_fingerprint=sha([fingerprint, role, "tokenized"])[:16], desc=f"tokenize {role}",
        ).with_format(None)

    uri = store.save_dataset(out, store.join(out_uri))
    return TokenizedRef(uri=uri, fingerprint=fingerprint, splits={s: len(d) for s, d in out.items()},
                        facts=ClassifierFacts(max_length=cfg.max_length, label_names=names,
                                         pad_with_eos=tokenizer.pad_token is None))


def prepare_inference(
    ds, text_column: str, split: str, model_dir: str, facts: ModelFacts, out_root: str, max_samples: int | None = None,
) -> TokenizedRef:
    """One split of texts + the model's fast tokenizer → a one-split DatasetDict at `{out_root}/{fingerprint}`.

    Columns: input_ids, attention_mask, row_id, text (no labels: a label column, if any, is ignored). The fingerprint
    hashes the texts themselves, the tokenizer and max_length, so the same inputs are tokenized once and reused.
    """
    from datasets import Dataset, DatasetDict
    from datasets.table import InMemoryTable
    from transformers import AutoTokenizer

    if text_column not in ds.column_names:
        raise ValueError(f"text column {text_column!r} not found in split {split!r}; "
                         f"available columns: {ds.column_names}")
    if len(ds) == 0:
        raise ValueError(f"split {split!r} is empty")
    if max_samples:
        ds = ds.select(range(min(max_samples, len(ds))))
    text = ds.with_format("arrow")[:].column(text_column)
    check_text({split: (text, None)}, text_column)
    text = text.cast(pa.large_string())
    fingerprint = sha({"v": PREPROCESS_VERSION, "kind": "inference", "texts": texts_digest(text),
                       "tokenizer": tokenizer_hash(model_dir), "max_length": facts.max_length, "split": split})
    uri = store.join(out_root, fingerprint[:24])
    ref = TokenizedRef(uri=uri, fingerprint=fingerprint, splits={split: len(text)}, facts=facts)
    if store.has_dataset(uri):
        return ref

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.is_fast:
        raise ValueError(f"{model_dir} has no fast tokenizer (tokenizer.json); batch inference needs one")
    encode = arrow_encoder(tokenizer, facts.max_length, probe=text[:32].to_pylist())
    table = pa.table({"text": text, "row_id": pa.array(np.arange(len(text)), pa.int64())})
    dataset = Dataset(InMemoryTable(table), fingerprint=sha([fingerprint, "raw"])[:16])
    out = DatasetDict({split: dataset.with_format("arrow").map(
        encode, batched=True, batch_size=4096, writer_batch_size=4096, new_fingerprint=fingerprint[:16],
        desc=f"tokenize {split}",
    ).with_format(None)})
    store.save_dataset(out, uri)
    return ref


# ----- helpers -------------------------------------------------------------------------------------------------------


def _label_space(label_cols: dict, features: dict, column: str, train: str) -> tuple[list[str], pa.Array | None]:
    """{split: label column} → (names, sorted raw values or None for ClassLabel); raises on unusable labels."""
    from datasets import ClassLabel

    for split, col in label_cols.items():
        if len(col) == 0:
            raise ValueError(f"split {split!r} is empty")
        if col.null_count:
            raise ValueError(f"label column {column!r} of split {split!r} has {col.null_count} missing values")
    values = None
    if isinstance(features[train], ClassLabel):
        names = list(features[train].names)
        for split, col in label_cols.items():
            low, high = pc.min_max(col).values()
            if low.as_py() < 0 or high.as_py() >= len(names):  # -1 marks unlabeled rows (GLUE test sets)
                raise ValueError(f"label column {column!r} of split {split!r} has ids outside 0..{len(names) - 1}; "
                                 "if the split is unlabeled, set it to null so it is carved from train")
    else:
        types = {s: c.type for s, c in label_cols.items()}
        if len(set(types.values())) > 1:
            raise ValueError(f"label column {column!r} has different types per split: {types}")
        kind = types[train]
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
                or pa.types.is_boolean(kind)):
            raise ValueError(f"label column {column!r} of split {train!r} holds {kind}; need class names or ids")
        # The label space is train's: a label seen only in validation or test would become a class the model never
        # saw (trained as "never predict this"), and its rows would be scored as unavoidable errors.
        values = pc.unique(label_cols[train])
        values = values.take(pc.sort_indices(values))
        names = [str(v) for v in values.to_pylist()]
        for split, col in label_cols.items():
            unseen = pc.filter(col, pc.invert(pc.is_in(col, value_set=values)))
            if len(unseen):
                examples = sorted({str(v) for v in pc.unique(unseen).to_pylist()})[:5]
                raise ValueError(f"label column {column!r} of split {split!r} holds {examples} ({len(unseen)} rows), "
                                 f"which split {train!r} never has: a model cannot learn them; add training examples "
                                 "or drop those rows")
    observed = pc.unique(label_cols[train]).to_pylist()
    if len(names) < 2 or len(observed) < 2:
        raise ValueError(f"single-class labels: label column {column!r} of split {train!r} holds only "
                         f"{observed} ({len(label_cols[train])} rows); a classifier needs at least 2 classes "
                         "(max_train_samples keeps the first rows: a dataset sorted by label needs more)")
    return names, values


def _check_positions(model_dir: str, max_length: int) -> None:
    """`max_length` must fit the model's position embeddings: past them, training dies on a tensor shape (and is
    retried) instead of failing here with the field's name."""
    import json
    from pathlib import Path

    from ...errors import PreflightError

    path = Path(model_dir, "config.json")
    config = json.loads(path.read_text()) if path.exists() else {}  # a tokenizer-only folder has no positions
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    if positions and max_length > positions:
        raise PreflightError(f"preprocess.max_length={max_length} is more than the model's {positions} positions")


def _label_ids(col: pa.ChunkedArray, values: pa.Array | None) -> np.ndarray:
    """Label column → int64 ids: ClassLabel ids as they are, other values by their index in the sorted values."""
    if values is not None:
        col = pc.index_in(col, value_set=values)
    return col.to_numpy().astype(np.int64)


def _carve(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Train label ids → {"train": idx, role: idx}: per-class shuffled takes, each split in original row order."""
    if not fractions:
        return {"train": np.arange(len(labels))}
    if len(labels) < len(fractions) + 1:
        raise ValueError(f"train split has {len(labels)} rows, too few to carve {sorted(fractions)} from it")
    rng = np.random.default_rng(seed)
    taken: dict[str, list[np.ndarray]] = {role: [] for role in ["train", *fractions]}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for role, frac in fractions.items():
            k = int(round(frac * len(idx)))
            taken[role].append(idx[start:start + k])
            start += k
        taken["train"].append(idx[start:])
    out = {role: np.sort(np.concatenate(parts)) for role, parts in taken.items()}
    if len(out["train"]) == 0:
        raise ValueError(f"carving {fractions} left no train rows: too few rows per class")
    for role in fractions:  # tiny data: every split gets at least one row
        if len(out[role]) == 0:
            pick = rng.integers(len(out["train"]))
            out[role], out["train"] = out["train"][pick:pick + 1], np.delete(out["train"], pick)
    return out


def _read_raw(raw: RawDataRef) -> tuple[dict[str, pa.Table], dict]:
    from datasets import Features

    tables, features = {}, {}
    for split in raw.splits:
        table = store.read_parquet(store.join(raw.uri, f"{split}.parquet"))
        tables[split], features[split] = table, Features.from_arrow_schema(table.schema)
    return tables, features
