"""What only a causal-LM recipe says, composed into `CausalLMConfig` (the pipeline config of `task: causal-lm`).

Each section here extends the shared one (hubflow.config) with this kind's keys: the data's shape and columns, the
chat template and loss mask, LoRA, batch generation, what a LoRA run publishes, the chat CausalLMSpace's answer length.
A classifier's recipe cannot carry any of them: its sections are the shared ones, which forbid unknown keys.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from ...config import (
    DataConfig,
    GateConfig,
    InferenceConfig,
    InferencePrecision,
    PipelineConfig,
    PreprocessConfig,
    PublishConfig,
    SpaceConfig,
    TrainConfig,
    _Stage,
)
from ...refs import ModelFacts

TASK = "causal-lm"


class DataShape(str, Enum):
    """The shape of the rows: chat turns, prompt/completion pairs, or raw text for continued pre-training. `auto`
    picks by the columns present: the messages column, else prompt + completion, else the text column."""

    auto = "auto"
    chat = "chat"
    prompt_completion = "prompt-completion"
    text = "text"


class LossOn(str, Enum):
    """Which tokens the loss is computed on."""

    completion = "completion"  # the assistant turns / the completion (and the EOS that ends them)
    all = "all"  # every token, prompt included


class TrainMethod(str, Enum):
    """What is trained: every weight, or low-rank adapters on a frozen base (LoRA; QLoRA: a 4-bit base, CUDA only)."""

    full = "full"
    lora = "lora"
    qlora = "qlora"


class PublishFormat(str, Enum):
    """What a LoRA run publishes: the base with the adapters merged in, or the adapter alone."""

    merged = "merged"  # reloads with AutoModelForCausalLM
    adapter = "adapter"  # reloads with peft on top of the base model at its pinned sha


class Decoding(str, Enum):
    greedy = "greedy"
    sample = "sample"


class CausalLMMetric(str, Enum):
    """The test metrics the gate may compare."""

    perplexity = "perplexity"  # lower is better
    exact_match = "exact_match"  # prompt-completion or chat data
    chrf = "chrf"  # character n-gram F-score of greedy generations vs references, 0..1


class CausalLMData(DataConfig):
    task: Literal["causal-lm"] = TASK
    text_column: str = Field("text", description="Column holding raw text to continue (shape text).")
    shape: DataShape = Field(DataShape.auto, description="chat, prompt-completion or text; auto: by columns.")
    messages_column: str = Field("messages", description="Column of chat turns: [{role, content}, ...].")
    prompt_column: str = Field("prompt", description="Column holding the prompt.")
    completion_column: str = Field("completion", description="Column holding the completion to learn.")


class CausalLMPreprocess(PreprocessConfig):
    task: Literal["causal-lm"] = TASK
    chat_template: str | None = Field(
        None, description="Jinja chat template for a tokenizer that has none (it is saved with the model)."
    )
    loss_on: LossOn = Field(LossOn.completion, description="CausalLMTrain on the completion only, or on every token.")
    packing: bool = Field(
        False, description="Pack several chat or prompt-completion examples into one sequence (position ids restart "
        "per example, so none attends to another); raw text is always packed into blocks."
    )


class Lora(_Stage):
    r: int = Field(16, ge=1, le=1024, description="Rank of the adapter matrices.")
    alpha: int = Field(32, ge=1, description="Scaling numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt, e.g. ['q_proj', 'v_proj']; default: every linear layer but the head."
    )


class CausalLMTrain(TrainConfig):
    task: Literal["causal-lm"] = TASK
    method: TrainMethod = Field(TrainMethod.full, description="full: every weight; lora: adapters on a frozen base; "
                                "qlora: adapters on a 4-bit base (CUDA).")
    lora: Lora = Field(default_factory=Lora, description="LoRA settings (method lora or qlora).")


class Generation(_Stage):
    """Batch generation settings; every one of them changes the outputs, so each is in the shard key."""

    max_new_tokens: int = Field(64, ge=1, le=8192, description="New tokens per completion at most.")
    decoding: Decoding = Field(Decoding.greedy, description="greedy (deterministic) or sample.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature (decoding: sample).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (decoding: sample).")
    seed: int = Field(0, description="Sampling seed (each shard draws from seed + its index).")
    stop: list[str] = Field(default_factory=list, description="Stop strings: generation ends after any of them.")


class CausalLMInference(InferenceConfig):
    task: Literal["causal-lm"] = TASK
    generation: Generation = Field(default_factory=Generation, description="How completions are generated.")

    @model_validator(mode="after")
    def _no_int8(self) -> "CausalLMInference":
        if self.precision is InferencePrecision.int8:
            raise ValueError("inference.precision=int8 is for text-classification; causal-lm predicts in auto or fp32")
        return self


class CausalLMGate(GateConfig):
    metric: CausalLMMetric | None = Field(None, description="Test-split metric the gate compares; default perplexity.")


class CausalLMPublish(PublishConfig):
    task: Literal["causal-lm"] = TASK
    gate: CausalLMGate = Field(default_factory=CausalLMGate)
    format: PublishFormat = Field(PublishFormat.merged, description="(LoRA runs) merged model or adapter only.")


class CausalLMSpace(SpaceConfig):
    task: Literal["causal-lm"] = TASK
    max_new_tokens: int = Field(128, ge=1, le=8192, description="New tokens per chat answer at most.")


class CausalLMConfig(PipelineConfig):
    """A causal LM's pipeline: the shared sections with this kind's keys."""

    model_config = ConfigDict(extra="forbid", title="causal-lm pipeline")

    task: Literal["causal-lm"] = Field(TASK, description="What the model learns to do.")
    data: CausalLMData
    preprocess: CausalLMPreprocess = Field(default_factory=CausalLMPreprocess)
    train: CausalLMTrain = Field(default_factory=CausalLMTrain)
    inference: CausalLMInference = Field(default_factory=CausalLMInference)
    publish: CausalLMPublish = Field(default_factory=CausalLMPublish)
    space: CausalLMSpace = Field(default_factory=CausalLMSpace)

    @model_validator(mode="after")
    def _settings_fit(self) -> "CausalLMConfig":
        if self.train.method is TrainMethod.qlora:
            import torch

            if not torch.cuda.is_available():  # a 4-bit base fails deep inside bitsandbytes once loaded: say so first
                raise ValueError("train.method=qlora needs a CUDA GPU; on CPU use method lora")
        if self.publish.format is PublishFormat.adapter and self.train.method is TrainMethod.full:
            raise ValueError("publish.format='adapter' needs train.method lora or qlora: "
                             "a full fine-tune has no adapter")
        return self


class CausalLMFacts(ModelFacts):
    """A causal LM's facts: the data it was trained on and how its prompts are rendered."""

    task: Literal["causal-lm"] = TASK
    shape: DataShape | None = None
    chat: bool = False  # prompts are rendered with the tokenizer's chat template
    chat_template: str | None = None  # a template given in the recipe (the tokenizer had none)
