"""Decoder-only models as sequence classifiers (GPT-2 and Llama style), whose tokenizers have no pad token: hubflow
pads with EOS and sets the model's pad id, so last-token pooling finds the last real token; they train, predict
and reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict

from hubflow.config import DataConfig, InferenceConfig, PreprocessConfig, TrainConfig
from hubflow.kinds import kind_for
from hubflow.refs import PinnedRepo
from hubflow.stages import pull
from hubflow.stages.predict import predict, read_predictions
from hubflow.stages.train import train_model
from tests.tiny import LABELS, MAX_POSITIONS, synthetic_rows, train_bytelevel_bpe

KIND = kind_for("text-classification")


def _no_pad_tokenizer(folder: Path):
    tok = train_bytelevel_bpe()
    tok.pad_token = None
    tok.save_pretrained(folder)
    assert tok.pad_token_id is None
    return tok


def _gpt2(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _no_pad_tokenizer(folder)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=MAX_POSITIONS,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def _llama(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _no_pad_tokenizer(folder)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=MAX_POSITIONS,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_a_decoder_without_a_pad_token_trains_predicts_and_reloads(build, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hubflow.kinds.text_classification.model import predict_texts

    model_dir = build(tmp_path / "base")
    rows = {s: synthetic_rows(n, i) for i, (s, n) in enumerate({"train": 160, "test": 40}.items())}
    dsd = DatasetDict({s: Dataset.from_dict({"text": [t for t, _ in r], "label": [LABELS[y] for _, y in r]})
                       for s, r in rows.items()})
    raw = pull.write_raw_splits(dsd, DataConfig(source="x"), KIND, str(tmp_path / "raw"), "x", None)
    tokenized = KIND.prepare(raw, str(model_dir), PreprocessConfig(max_length=48), DataConfig(source="x"),
                             str(tmp_path / "tok"))
    base = PinnedRepo(repo_id="tiny/decoder", repo_type="model", revision="main", sha="3" * 40)
    ck = train_model(tokenized, str(model_dir), base, TrainConfig(epochs=2, batch_size=16, learning_rate=3e-3),
                     str(tmp_path / "train"))
    pred = predict(ck.uri, ck.fingerprint, tokenized, "test", InferenceConfig(batch_size=7), str(tmp_path / "pred"))
    table = read_predictions(pred).to_pylist()
    assert [r["row_id"] for r in table] == list(range(len(table))) and len(table) == tokenized.splits["test"]

    folder = Path(ck.uri)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert tok.pad_token == tok.eos_token and model.config.pad_token_id == tok.eos_token_id
    # Padded batches pool the last real token: batch inference (padded, length-sorted) equals one text at a time.
    alone = [predict_texts(folder, [r["text"]], max_length=48)[0]["label"] for r in table[:8]]
    assert alone == [r["pred_label"] for r in table[:8]]


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_a_decoder_classifier_publishes_and_reloads_from_the_hub(build, prefect_api, localhub, tmp_path, monkeypatch):
    """The whole pipeline on localhub: a pad-less decoder base trains, predicts and publishes; the model reloads from
    the Hub at the published sha with `pipeline(...)`, reproduces the stored predictions, and its card says how it
    pads."""
    import uuid

    from huggingface_hub import HfApi, ModelCard
    from transformers import pipeline as hf_pipeline

    from hubflow.config import PipelineConfig
    from hubflow.flows.pipeline import pipeline
    from tests.tiny import push_keyword_dataset

    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    tag = uuid.uuid4().hex[:6]
    base, data, target = f"alice/{build.__name__[1:]}-base-{tag}", f"alice/kw-{tag}", f"alice/clf-{tag}"
    api.create_repo(base)
    api.upload_folder(folder_path=str(build(tmp_path / "base")), repo_id=base)
    push_keyword_dataset(api, data, tmp_path / "data", {"train": 160, "test": 24})
    monkeypatch.setenv("HF_TOKEN", localhub.token("alice"))
    config = PipelineConfig.model_validate({
        "model": {"repo_id": base}, "data": {"source": data, "max_eval_samples": 16},
        "preprocess": {"max_length": 48},
        "train": {"epochs": 2, "batch_size": 16, "learning_rate": 3e-3},
        "publish": {"enabled": True, "repo_id": target, "predictions_repo_id": f"{target}-predictions"},
        "artifact_store": str(tmp_path / "store"),
    })
    result = pipeline(config)
    assert result.tokenized.facts.pad_with_eos
    model = result.published.model
    assert api.model_info(target).sha == model.sha

    from hubflow.stages.predict import read_predictions

    stored = read_predictions(result.predictions).to_pylist()[:6]
    clf = hf_pipeline("text-classification", model=target, revision=model.sha, token=localhub.token("alice"))
    assert clf.tokenizer.pad_token == clf.tokenizer.eos_token and clf.model.config.pad_token_id is not None
    assert [o["label"] for o in clf([r["text"] for r in stored], batch_size=3)] == [r["pred_label"] for r in stored]
    card = ModelCard.load(target, token=localhub.token("alice"))
    assert "padded with its EOS token" in card.text
