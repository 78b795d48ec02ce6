"""The causal-LM life cycle end to end, as a user runs it: a tiny Llama and a chat dataset on localhub, the pipeline
with LoRA, the merged model published and reloaded at its sha, the adapter published and reloaded with peft on the
pinned base, the chat Space answering through gradio_client, batch generation over a prompts dataset.

Real clients over HTTP against localhub, Prefect's test API; ~2 min on 2 cores (the Space starts a real gradio app).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.tiny import push_chat_dataset, push_parquet_dataset, push_tiny_llama

pytestmark = pytest.mark.usefixtures("prefect_api")
SPACE_TIMEOUT = 300


@pytest.fixture(scope="module")
def llm_repos(localhub, tmp_path_factory):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    tag = uuid.uuid4().hex[:6]
    repos = {"model": f"alice/tiny-llama-{tag}", "data": f"alice/topics-chat-{tag}", "target": f"alice/tiny-chat-{tag}"}
    repos["model_sha"] = push_tiny_llama(api, repos["model"], tmp_path_factory.mktemp("llama"))
    repos["data_sha"] = push_chat_dataset(api, repos["data"], tmp_path_factory.mktemp("chat"),
                                          {"train": 240, "test": 24})
    return repos


def llm_config(repos, store, **publish):
    from hubflow.config import PipelineConfig

    return PipelineConfig.model_validate({
        "task": "causal-lm",
        "model": {"repo_id": repos["model"]},
        "data": {"source": repos["data"], "max_eval_samples": 24},
        "preprocess": {"max_length": 96},
        "train": {"method": "lora", "epochs": 1, "batch_size": 16, "learning_rate": 3e-2, "lora": {"r": 4, "alpha": 8},
                  "checkpoint_every_steps": 5},
        "inference": {"batch_size": 8, "shard_size": 10, "generation": {"max_new_tokens": 8}},
        "publish": {"enabled": True, "repo_id": repos["target"], **publish},
        "space": {"enabled": True, "max_new_tokens": 8, "timeout_seconds": SPACE_TIMEOUT},
        "artifact_store": str(store),
    })


@pytest.fixture(scope="module")
def released(llm_repos, localhub, tmp_path_factory):
    """The pipeline run: LoRA fine-tune, batch generation, evaluation, merged model + predictions + chat Space."""
    from hubflow.flows.pipeline import pipeline

    os.environ["HF_TOKEN"] = localhub.token("alice")
    try:
        state = pipeline(llm_config(llm_repos, tmp_path_factory.mktemp("store")), return_state=True)
    finally:
        os.environ.pop("HF_TOKEN", None)
    assert state.is_completed(), state.message
    return state.result()


def test_the_run_pins_trains_generates_and_scores(released, llm_repos):
    from hubflow.stages.predict import read_predictions

    assert (released.base_model.sha, released.dataset.sha) == (llm_repos["model_sha"], llm_repos["data_sha"])
    assert released.checkpoint.facts.task == "causal-lm" and released.checkpoint.adapter_uri
    m = released.evaluation.metrics
    assert {"loss", "perplexity", "exact_match", "chrf"} <= set(m) and m["test_rows"] == 24
    rows = read_predictions(released.predictions).to_pylist()
    assert [r["row_id"] for r in rows] == list(range(24)) and all(r["finish_reason"] for r in rows)


def test_the_merged_model_reloads_at_the_published_sha_and_generates(released, localhub):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubflow.stages.predict import read_predictions

    model_repo = released.published.model
    token = localhub.token("alice")
    model = AutoModelForCausalLM.from_pretrained(model_repo.repo_id, revision=model_repo.sha, token=token)
    tok = AutoTokenizer.from_pretrained(model_repo.repo_id, revision=model_repo.sha, token=token)
    row = read_predictions(released.predictions).to_pylist()[0]
    ids = tok.apply_chat_template([{"role": "user", "content": row["message"]}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
    assert tok.decode(out, skip_special_tokens=True) == row["completion"]  # what batch generation wrote


def test_the_card_pins_base_and_data_and_reports_the_lm_metrics(released, localhub):
    from huggingface_hub import ModelCard

    model_repo = released.published.model
    card = ModelCard.load(model_repo.repo_id, token=localhub.token("alice"))
    data = card.data.to_dict()
    assert data["base_model"] == released.base_model.repo_id and data["pipeline_tag"] == "text-generation"
    assert data["hubflow"]["base_model_sha"] == released.base_model.sha
    assert data["hubflow"]["dataset_sha"] == released.dataset.sha
    metrics = {m["type"] for r in data["model-index"][0]["results"] for m in r["metrics"]}
    assert {"perplexity", "exact_match", "chrf"} <= metrics
    assert "| method | lora |" in card.text and '"r": 4' in card.text.replace("'", '"')
    assert 'pipeline("text-generation"' in card.text and model_repo.tag in card.text


def test_the_chat_space_answers_as_hubflow_generates(released):
    from gradio_client import Client

    from hubflow.stages.predict import read_predictions

    space = released.space
    assert space.stage == "RUNNING" and space.model == released.published.model
    client = Client(space.url, verbose=False, analytics_enabled=False, download_files=False)
    row = read_predictions(released.predictions).to_pylist()[1]
    from hubflow.config import SpaceConfig
    from hubflow.kinds import kind_for

    want = kind_for("causal-lm").answer_texts(released.checkpoint.uri, [row["message"]], released.checkpoint.facts,
                                              SpaceConfig(task="causal-lm", max_new_tokens=8))[0]
    assert client.predict(row["message"], api_name="/chat").strip() == want.strip()
    # A conversation: the second turn's answer depends on the first (the app renders the history with the template).
    follow_up = client.predict("and the weather?", api_name="/chat")
    assert isinstance(follow_up, str) and follow_up


def test_the_adapter_reloads_with_peft_on_the_pinned_base(released, llm_repos, localhub):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hubflow.config import PublishConfig, SpaceConfig
    from hubflow.flows.publish import publish_run

    target = f"{llm_repos['target']}-adapter"
    os.environ["HF_TOKEN"] = localhub.token("alice")
    try:
        outcome = publish_run(released.summary_uri, PublishConfig(task="causal-lm", repo_id=target, format="adapter"),
                              SpaceConfig(enabled=False))
    finally:
        os.environ.pop("HF_TOKEN", None)
    token = localhub.token("alice")
    from huggingface_hub import HfApi, hf_hub_download

    files = HfApi(token=token).list_repo_files(target, revision=outcome.model.sha)
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    config = json.loads(Path(hf_hub_download(target, "adapter_config.json", revision=outcome.model.sha,
                                             token=token)).read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == (llm_repos["model"], llm_repos["model_sha"])
    base = AutoModelForCausalLM.from_pretrained(llm_repos["model"], revision=config["revision"], token=token)
    on_base = PeftModel.from_pretrained(base, target, revision=outcome.model.sha, token=token).eval()
    merged = AutoModelForCausalLM.from_pretrained(released.published.model.repo_id,
                                                  revision=released.published.model.sha, token=token).eval()
    ids = torch.tensor([[1, 5, 9, 12, 30, 41]])
    with torch.no_grad():
        assert (on_base(ids).logits - merged(ids).logits).abs().max().item() < 1e-4
    from huggingface_hub import ModelCard

    card = ModelCard.load(target, token=token)
    assert card.data.to_dict()["base_model_relation"] == "adapter" and llm_repos["model_sha"] in card.text


def test_batch_generation_over_a_prompts_dataset(released, llm_repos, localhub, tmp_path):
    import pyarrow as pa
    from huggingface_hub import HfApi

    from hubflow.config import DataConfig, InferenceConfig
    from hubflow.flows.batch import batch_inference
    from hubflow.stages.predict import read_predictions

    api = HfApi(token=localhub.token("alice"))
    prompts = [f"topic of: {w}" for w in ("goal match", "rain storm", "bank shares", "coach team", "snow wind")]
    repo = f"alice/prompts-{uuid.uuid4().hex[:6]}"
    push_parquet_dataset(api, repo, tmp_path / "prompts", {"test": pa.table({"prompt": prompts})})
    os.environ["HF_TOKEN"] = localhub.token("alice")
    try:
        result = batch_inference(released.published.model.repo_id, DataConfig(source=repo, test_split="test"),
                                 model_revision=released.published.model.sha,
                                 inference=InferenceConfig(task="causal-lm", batch_size=2, shard_size=2,
                                                           generation={"max_new_tokens": 8}),
                                 artifact_store=str(tmp_path / "store"))
    finally:
        os.environ.pop("HF_TOKEN", None)
    rows = read_predictions(result.predictions).to_pylist()
    assert [r["row_id"] for r in rows] == list(range(5)) and [r["message"] for r in rows] == prompts
    assert all(r["finish_reason"] in ("eos", "length", "stop") and r["new_tokens"] >= 1 for r in rows)


def test_the_ui_form_shows_the_llm_fields():
    """The pipeline's parameter schema (what the Prefect UI renders as the run form) carries the LLM settings."""
    from prefect.utilities.callables import parameter_schema

    from hubflow.flows.pipeline import pipeline

    schema = json.dumps(parameter_schema(pipeline).model_dump())
    for field in ("causal-lm", "messages_column", "chat_template", "loss_on", "packing", "lora", "target_modules",
                  "activation_checkpointing", "max_new_tokens", "decoding", "stop", "adapter", "perplexity"):
        assert f'"{field}"' in schema, field
