"""The store's dataset verbs: `save_dataset` writes what `save_to_disk` writes, atomically, on disk and on S3."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict

from hubflow.doors import store


def _dsd(rows: int) -> DatasetDict:
    return DatasetDict({split: Dataset.from_dict({"row_id": list(range(rows)), "text": [f"{split} {i}" for i in
                                                                                      range(rows)]})
                        for split in ("train", "test")})


def _rows(dsd) -> dict[str, list]:
    return {split: ds["text"] for split, ds in dsd.items()}


def test_a_local_save_holds_save_to_disks_files_and_leaves_no_temp_folder(tmp_path):
    _dsd(3).save_to_disk(str(tmp_path / "reference"))
    uri = store.save_dataset(_dsd(3), str(tmp_path / "saved"))
    assert store.find(uri) == store.find(str(tmp_path / "reference"))
    assert store.read_bytes(store.join(uri, "dataset_dict.json")) == (tmp_path / "reference/dataset_dict.json"
                                                                     ).read_bytes()
    assert store.has_dataset(uri) and _rows(store.load_dataset(uri)) == _rows(_dsd(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference", "saved"]


def test_a_save_replaces_the_old_folder_and_a_failed_save_leaves_it_whole(tmp_path):
    uri = str(tmp_path / "tokenized")
    store.save_dataset(_dsd(5), uri)
    (tmp_path / "tokenized" / "stale.arrow").write_bytes(b"from an earlier save")
    store.save_dataset(_dsd(2), uri)
    assert "stale.arrow" not in store.ls(uri) and _rows(store.load_dataset(uri)) == _rows(_dsd(2))

    class Broken(DatasetDict):
        def save_to_disk(self, path, **kwargs):
            super().save_to_disk(path, **kwargs)
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.save_dataset(Broken(_dsd(7)), uri)
    assert _rows(store.load_dataset(uri)) == _rows(_dsd(2))
    with pytest.raises(OSError, match="disk full"):
        store.save_dataset(Broken(_dsd(7)), str(tmp_path / "new"))
    assert not store.has_dataset(str(tmp_path / "new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenized"]


def test_an_s3_save_holds_the_same_files_with_the_marker_written_last(s3, tmp_path, monkeypatch):
    _dsd(3).save_to_disk(str(tmp_path / "reference"))
    uri = f"{s3}/preprocess/key"
    store.save_dataset(_dsd(5), uri)
    store.write_bytes(f"{uri}/train/data-00007-of-00009.arrow", b"a stale shard")
    complete_while_writing = []
    save_split = Dataset.save_to_disk

    def spy(self, path, **kwargs):
        complete_while_writing.append(store.has_dataset(uri))
        return save_split(self, path, **kwargs)

    monkeypatch.setattr(Dataset, "save_to_disk", spy)
    store.save_dataset(_dsd(3), uri)
    assert store.find(uri) == store.find(str(tmp_path / "reference"))
    assert store.read_bytes(f"{uri}/dataset_dict.json") == (tmp_path / "reference/dataset_dict.json").read_bytes()
    assert complete_while_writing == [False, False]  # each split is written before the marker
    assert store.has_dataset(uri) and _rows(store.load_dataset(uri)) == _rows(_dsd(3))
    assert not store.has_dataset(f"{s3}/preprocess/other")
