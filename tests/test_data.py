"""Data stages on tiny things: the demo dataset, raw file loading, label checks, preprocessing and its fingerprint.

A WordPiece tokenizer is trained on the fly (a fraction of a second), so nothing here needs a model download.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset
from transformers import AutoTokenizer

from hubflow.config import DataConfig, PreprocessConfig
from hubflow.demo_data import DEMO_LABELS, build_demo_dataset, write_demo_parquet
from hubflow.kinds import kind_for
from hubflow.kinds.text_classification import data as tc
from hubflow.refs import RawDataRef
from hubflow.stages import pull
from hubflow.tokenize import load_tokenized

KIND = kind_for("text-classification")


@pytest.fixture(scope="module")
def demo() -> DatasetDict:
    return build_demo_dataset(seed=0)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, demo) -> str:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=special)
    tok.train_from_iterator(_col(demo["train"], "text"), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")]
    )
    out = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(out)
    return str(out)


def _col(ds: Dataset, name: str) -> list:
    return ds[name][:]  # a plain list (datasets returns a lazy Column)


def _cfg(source="unused", **kw) -> DataConfig:
    return DataConfig(source=source, **kw)


def _tickets(n: int, start: int = 0) -> Dataset:
    """n rows with string labels cycling through three teams."""
    teams = ["shipping", "billing", "account"]
    rows = range(start, start + n)
    return Dataset.from_dict({"text": [f"message number {i} about {teams[i % 3]}" for i in rows],
                              "label": [teams[i % 3] for i in rows]})


def _ids(ids: list[int]) -> Dataset:
    """Rows with ClassLabel(["a", "b"]) ids; -1 is the datasets convention for an unlabeled row."""
    features = Features(text=Value("string"), label=ClassLabel(names=["a", "b"]))
    return Dataset.from_dict({"text": [f"row {i}" for i in range(len(ids))], "label": ids}, features=features)


# ----- demo dataset --------------------------------------------------------------------------------------------------

def test_demo_dataset_is_deterministic_large_and_labelled(demo):
    again = build_demo_dataset(seed=0)
    for split in demo:
        assert _col(demo[split], "text") == _col(again[split], "text")
        assert _col(demo[split], "label") == _col(again[split], "label")
    assert _col(build_demo_dataset(seed=1)["train"], "text") != _col(demo["train"], "text")

    assert set(demo) == {"train", "validation", "test"}
    assert sum(len(ds) for ds in demo.values()) >= 2400
    assert len(DEMO_LABELS) >= 4
    assert demo["train"].features["label"] == ClassLabel(names=list(DEMO_LABELS))
    for ds in demo.values():
        assert set(_col(ds, "label")) == set(range(len(DEMO_LABELS)))  # every class in every split
    texts = [t for ds in demo.values() for t in _col(ds, "text")]
    assert len(set(texts)) == len(texts)  # no test message is also a train message
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) <= 3 and max(lengths) >= 25  # one-liners and several sentences


def test_write_demo_parquet_is_byte_identical_and_keeps_label_names(tmp_path):
    first, second = write_demo_parquet(tmp_path / "a"), write_demo_parquet(tmp_path / "b")
    assert [p.relative_to(tmp_path / "a").as_posix() for p in first] == [
        "data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet",
        "data/test-00000-of-00001.parquet", "README.md"]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]

    loaded = load_dataset(str(tmp_path / "a"))
    assert loaded["test"].features["label"].names == list(DEMO_LABELS)
    assert {s: len(d) for s, d in loaded.items()} == {"train": 2000, "validation": 200, "test": 400}


# ----- raw files -----------------------------------------------------------------------------------------------------

def test_load_raw_files_reads_the_hub_layout(tmp_path):
    write_demo_parquet(tmp_path / "src")
    raw = pull.load_raw_files(str(tmp_path / "src"), _cfg(max_train_samples=50), KIND, str(tmp_path / "raw"))
    assert raw.splits == {"train": 50, "validation": 200, "test": 400}
    assert tc.label_names_of(raw) == list(DEMO_LABELS)  # the ClassLabel survived parquet → store → parquet
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["test.parquet", "train.parquet",
                                                                    "validation.parquet"]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_load_raw_files_reads_split_named_files(tmp_path, fmt):
    src = tmp_path / "src"
    src.mkdir()
    writers = {"csv": lambda ds, p: ds.to_csv(p, index=False), "parquet": lambda ds, p: ds.to_parquet(p),
               "jsonl": lambda ds, p: ds.to_json(p, lines=True)}
    writers[fmt](_tickets(30), str(src / f"train-0.{fmt}"))  # two train shards by prefix, one test file by name
    writers[fmt](_tickets(12, start=30), str(src / f"train_1.{fmt}"))
    writers[fmt](_tickets(9, start=100), str(src / f"test.{fmt}"))
    (src / "notes.txt").write_text("not data")

    raw = pull.load_raw_files(str(src), _cfg(max_train_samples=40), KIND, str(tmp_path / "raw"))
    assert raw.splits == {"train": 40, "test": 9}  # no validation file: preprocess carves one later
    assert tc.label_names_of(raw) == ["account", "billing", "shipping"]
    train = pq.read_table(tmp_path / "raw" / "train.parquet")
    assert train.column("text").to_pylist() == _col(_tickets(40), "text")  # the first N rows, in file order


def test_raw_fingerprint_hashes_content_not_location(tmp_path):
    dsdict = DatasetDict(train=_tickets(20))
    a = pull.write_raw_splits(dsdict, _cfg(), KIND, str(tmp_path / "a"), source="x", source_sha=None)
    b = pull.write_raw_splits(dsdict, _cfg(), KIND, str(tmp_path / "b"), source="y", source_sha=None)
    c = pull.write_raw_splits(DatasetDict(train=_tickets(21)), _cfg(), KIND, str(tmp_path / "c"),
                              source="x", source_sha=None)
    assert a.fingerprint == b.fingerprint != c.fingerprint


@pytest.mark.parametrize(
    "dsdict, cfg_kw, words",
    [
        (DatasetDict(train=_tickets(6)), {"text_column": "body"}, ["text column", "'body'", "'train'", "'label'"]),
        (DatasetDict(train=_tickets(6), test=_tickets(3).rename_column("label", "team")), {},
         ["label column", "'label'", "'test'", "'team'"]),
        (DatasetDict(train=_tickets(6), validation=_tickets(0)), {}, ["'validation'", "empty"]),
        (DatasetDict(train=Dataset.from_dict({"text": ["a", "b"], "label": ["x", "x"]})), {},
         ["single-class", "'label'", "'train'"]),
        (DatasetDict(train=_ids([1, 1, 1])), {}, ["single-class", "'train'", "[1]"]),
        (DatasetDict(validation=_tickets(6)), {}, ["train split", "'train'", "validation"]),
        (DatasetDict(train=_ids([0, 1, 0]), test=_ids([-1, -1])), {}, ["'test'", "outside 0..1", "null"]),
    ],
    ids=["no-text-column", "no-label-column", "empty-split", "single-class", "single-class-classlabel", "no-train",
         "unlabeled-test"],
)
def test_write_raw_splits_rejects_unusable_data_naming_the_culprit(tmp_path, dsdict, cfg_kw, words):
    with pytest.raises(ValueError) as err:
        pull.write_raw_splits(dsdict, _cfg(**cfg_kw), KIND, str(tmp_path / "raw"), source="src", source_sha=None)
    for word in words:
        assert word in str(err.value)
    assert not (tmp_path / "raw").exists()  # checked before anything is written


@pytest.mark.parametrize("rows, words", [([], ["'train'", "empty"]), (["x", "x", "x"], ["single-class", "'label'"])])
def test_label_names_of_rejects_unusable_stored_splits(tmp_path, rows, words):
    # A ref to files written by someone else (an older run, another tool): label_names_of checks on its own.
    features = Features(text=Value("string"), label=Value("string"))
    stored = Dataset.from_dict({"text": ["t"] * len(rows), "label": rows}, features=features)
    stored.to_parquet(tmp_path / "train.parquet")
    raw = RawDataRef(uri=str(tmp_path), fingerprint="f", splits={"train": len(rows)},
                     columns={"text": "text", "label": "label"}, source="elsewhere")
    with pytest.raises(ValueError) as err:
        tc.label_names_of(raw)
    assert all(w in str(err.value) for w in words)


# ----- preprocess ----------------------------------------------------------------------------------------------------

def test_preprocess_keeps_rows_in_order_with_classlabel_ids(tmp_path, demo, tokenizer_dir):
    cfg = _cfg(max_train_samples=300, max_eval_samples=40, max_test_samples=60)
    raw = pull.write_raw_splits(demo, cfg, KIND, str(tmp_path / "raw"), source="demo", source_sha="abc")
    ref = tc.prepare(raw, tokenizer_dir, PreprocessConfig(max_length=16), cfg, str(tmp_path / "tok"))

    assert ref.splits == {"train": 300, "validation": 40, "test": 60} == raw.splits
    assert ref.facts.label_names == list(DEMO_LABELS)
    out = load_tokenized(ref)
    assert list(out) == ["train", "validation", "test"]
    lengths = [len(ids) for ds in out.values() for ids in _col(ds, "input_ids")]
    assert max(lengths) == 16 and min(lengths) < 16  # truncated, not padded
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    for split, n in ref.splits.items():
        ds = out[split]
        assert _col(ds, "input_ids") == tokenizer(_col(ds, "text"), truncation=True, max_length=16)["input_ids"]
        assert set(ds.column_names) == {"input_ids", "attention_mask", "labels", "row_id", "text"}
        assert _col(ds, "row_id") == list(range(n))
        assert _col(ds, "text") == _col(demo[split], "text")[:n]
        assert _col(ds, "labels") == _col(demo[split], "label")[:n]
        assert all(set(m) == {1} for m in _col(ds, "attention_mask"))


def test_preprocess_carves_missing_splits_deterministically(tmp_path, tokenizer_dir):
    cfg = _cfg(validation_split=None)  # a test split exists, validation does not
    raw = pull.write_raw_splits(DatasetDict(train=_tickets(90), test=_tickets(9, start=500)), cfg, KIND,
                                str(tmp_path / "raw"), source="src", source_sha=None)
    pre = PreprocessConfig(validation_fraction=0.2, split_seed=7)
    runs = [load_tokenized(tc.prepare(raw, tokenizer_dir, p, cfg, str(tmp_path / name)))
            for name, p in [("a", pre), ("b", pre), ("c", pre.model_copy(update={"split_seed": 8}))]]
    a, b, c = runs

    assert _col(a["validation"], "text") == _col(b["validation"], "text")
    assert _col(a["train"], "text") == _col(b["train"], "text")
    assert _col(a["validation"], "text") != _col(c["validation"], "text")
    assert len(a["validation"]) == 18 and len(a["train"]) == 72 and len(a["test"]) == 9
    assert sorted(_col(a["train"], "text") + _col(a["validation"], "text")) == sorted(_col(_tickets(90), "text"))
    assert _col(a["test"], "text") == _col(_tickets(9, start=500), "text")  # an existing split is used as is
    assert sorted(set(_col(a["validation"], "labels"))) == [0, 1, 2]  # stratified: every class in the carved split
    # string labels → ids by sorted name, consistently in every split
    names = ["account", "billing", "shipping"]
    for ds in (a["train"], a["validation"], a["test"]):
        assert all(names[label] in text for label, text in zip(_col(ds, "labels"), _col(ds, "text")))
        assert _col(ds, "row_id") == list(range(len(ds)))


def test_preprocess_carves_both_splits_from_train_only_data(tmp_path, tokenizer_dir):
    cfg = _cfg()
    raw = pull.write_raw_splits(DatasetDict(train=_tickets(60)), cfg, KIND, str(tmp_path / "raw"), "s", source_sha=None)
    ref = tc.prepare(raw, tokenizer_dir, PreprocessConfig(validation_fraction=0.1, test_fraction=0.2), cfg,
                          str(tmp_path / "tok"))
    assert ref.splits == {"train": 42, "validation": 6, "test": 12}
    out = load_tokenized(ref)
    seen = _col(out["train"], "text") + _col(out["validation"], "text") + _col(out["test"], "text")
    assert sorted(seen) == sorted(_col(_tickets(60), "text"))  # disjoint and complete


def test_preprocess_fingerprint_is_stable_and_tracks_config(tmp_path, tokenizer_dir):
    cfg = _cfg()
    raw = pull.write_raw_splits(DatasetDict(train=_tickets(30)), cfg, KIND, str(tmp_path / "raw"), "s", source_sha=None)

    def fingerprint(name, **kw):
        return tc.prepare(raw, tokenizer_dir, PreprocessConfig(**kw), cfg, str(tmp_path / name)).fingerprint

    assert fingerprint("a", max_length=32) == fingerprint("b", max_length=32)
    assert fingerprint("c", max_length=64) != fingerprint("a", max_length=32)
    assert fingerprint("d", max_length=32, split_seed=1) != fingerprint("a", max_length=32)


# ----- empty splits and the data line ---------------------------------------------------------------------------------

def _write_split(path, fmt: str, rows: int) -> None:
    """`rows` tickets as a file of `fmt`; 0 rows is what an export of an empty split leaves (a header, an empty
    parquet, an empty file)."""
    ds = _tickets(rows)
    if fmt == "parquet":
        ds.to_parquet(str(path))
    elif fmt in ("csv", "tsv"):
        ds.to_csv(str(path), index=False, sep="," if fmt == "csv" else "\t")
    elif fmt == "empty-csv":
        path.write_text("")
    else:
        ds.to_json(str(path), lines=True)


@pytest.mark.parametrize("fmt, ext", [("parquet", "parquet"), ("csv", "csv"), ("empty-csv", "csv"), ("tsv", "tsv"),
                                      ("jsonl", "jsonl")])
def test_an_empty_split_file_names_the_split_the_setting_and_the_file(tmp_path, fmt, ext):
    src = tmp_path / "src"
    src.mkdir()
    _write_split(src / f"train.{ext}", "csv" if fmt == "empty-csv" else fmt, 12)
    _write_split(src / f"test.{ext}", fmt, 0)
    with pytest.raises(ValueError) as err:
        pull.load_raw_files(str(src), _cfg(str(src)), KIND, str(tmp_path / "raw"))
    message = str(err.value)
    assert message == f"split 'test' (data.test_split) is empty: {src / f'test.{ext}'} holds no rows", message
    assert not (tmp_path / "raw").exists()  # stopped at the pull, before anything was written


def test_an_empty_renamed_validation_split_names_its_setting(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _write_split(src / "train.csv", "csv", 12)
    _write_split(src / "dev.csv", "csv", 0)
    with pytest.raises(ValueError, match=r"split 'dev' \(data.validation_split\) is empty: .*dev.csv holds no rows"):
        pull.load_raw_files(str(src), _cfg(str(src), validation_split="dev"), KIND, str(tmp_path / "raw"))


def test_an_empty_split_for_batch_inference_names_data_test_split(tmp_path):
    _write_split(tmp_path / "today.parquet", "parquet", 0)
    with pytest.raises(ValueError, match=r"split 'today' \(data.test_split\) is empty: .*today.parquet holds no rows"):
        pull.load_files_split(str(tmp_path), "today")


def test_the_data_line_lists_each_splits_columns_where_they_differ(tmp_path, caplog):
    # A GLUE SST-2 folder: train.tsv has `sentence`, dev.tsv calls it `content`.
    src = tmp_path / "sst2"
    src.mkdir()
    (src / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"a fine film {i}\t{i % 2}\n" for i in range(20)))
    (src / "dev.tsv").write_text("content\tlabel\n" + "".join(f"a dull film {i}\t{i % 2}\n" for i in range(6)))
    cfg = _cfg(str(src), validation_split="dev", text_column="sentence")
    refused = pytest.raises(ValueError, match="'sentence' not found in split 'dev'")  # the clear error that follows
    with caplog.at_level("INFO", logger="hubflow"), refused:
        pull.load_raw_files(str(src), cfg, KIND, str(tmp_path / "raw"))
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data ")]
    assert "train: 20 rows, columns sentence (" in line and "dev: 6 rows, columns content (" in line, line


def test_the_data_line_lists_shared_columns_once(tmp_path, caplog):
    with caplog.at_level("INFO", logger="hubflow"):
        pull.write_raw_splits(DatasetDict(train=_tickets(9), test=_tickets(3)), _cfg(), KIND, str(tmp_path / "raw"),
                              source="src", source_sha=None)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data ")]
    assert line == "data src: train: 9 rows, test: 3 rows; columns text (string), label (string)", line


def test_a_missing_split_names_its_setting(tmp_path):
    _write_split(tmp_path / "train.csv", "csv", 12)
    with pytest.raises(ValueError, match=r"no files for split 'today' \(data.test_split\) under "):
        pull.load_files_split(str(tmp_path), "today")
    with pytest.raises(ValueError, match=r"no files for split 'training' \(data.train_split\) under "):
        pull.load_raw_files(str(tmp_path), _cfg(str(tmp_path), train_split="training"), KIND, str(tmp_path / "raw"))
