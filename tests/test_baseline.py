"""flows/baseline.py: the base model scored on a recipe's test split, then the pipeline on the same recipe reuses its
pull and preprocess from Prefect's cache and scores the fine-tuned model on the same rows (what the demos' before and
after rest on). A tiny Llama and a chat dataset on localhub; ~1 min on 2 cores.
"""

from __future__ import annotations

import os
import uuid

import pytest

from tests.tiny import push_chat_dataset, push_tiny_llama

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_the_baseline_scores_the_base_model_on_the_rows_the_pipeline_then_reuses(localhub, tmp_path):
    from huggingface_hub import HfApi

    from hubflow.config import PipelineConfig
    from hubflow.flows.baseline import baseline
    from hubflow.flows.pipeline import pipeline
    from hubflow.ops.demo import stage_states
    from hubflow.stages.predict import read_predictions

    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    tag = uuid.uuid4().hex[:6]
    base_sha = push_tiny_llama(api, f"alice/base-llama-{tag}", tmp_path / "llama", pretrained=False)
    push_chat_dataset(api, f"alice/base-chat-{tag}", tmp_path / "chat", {"train": 64, "test": 12})
    config = PipelineConfig.model_validate({
        "task": "causal-lm", "model": {"repo_id": f"alice/base-llama-{tag}"},
        "data": {"source": f"alice/base-chat-{tag}", "max_eval_samples": 8}, "preprocess": {"max_length": 96},
        "train": {"method": "lora", "epochs": 1, "batch_size": 16, "learning_rate": 3e-2, "lora": {"r": 4, "alpha": 8}},
        "inference": {"batch_size": 8, "generation": {"max_new_tokens": 4}},
        "artifact_store": str(tmp_path / "store"),
    })
    os.environ["HF_TOKEN"] = localhub.token("alice")
    try:
        base_state = baseline(config, return_state=True)
        assert base_state.is_completed(), base_state.message
        base = base_state.result()
        state = pipeline(config, return_state=True)
        assert state.is_completed(), state.message
        result = state.result()
        base_stages, stages = stage_states(base.flow_run_id), stage_states(result.flow_run_id)
    finally:
        os.environ.pop("HF_TOKEN", None)
    assert base.base_model.sha == base_sha == result.base_model.sha
    assert base_stages["preprocess"] == "Completed" and stages["preprocess"] == "Cached"
    assert base.evaluation.split == result.evaluation.split == "test"
    assert base.evaluation.metrics["test_rows"] == result.evaluation.metrics["test_rows"] == 12
    assert base.evaluation.metrics.keys() == result.evaluation.metrics.keys()
    assert base.predictions.model_fingerprint != result.predictions.model_fingerprint  # the base's own weights
    prompts = [read_predictions(p).column("message").to_pylist() for p in (base.predictions, result.predictions)]
    assert prompts[0] == prompts[1]  # the same test rows, in the same order
    assert base.predictions.uri.startswith(str(tmp_path / "store" / "baseline"))
