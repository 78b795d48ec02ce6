"""What only a text classifier's recipe says, composed into `ClassifierConfig` (the pipeline config of
`task: text-classification`): its label column and the metrics its gate may compare."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import ConfigDict, Field

from ...config import DataConfig, GateConfig, PipelineConfig, PublishConfig
from ...refs import ModelFacts

TASK = "text-classification"


class ClassifierMetric(str, Enum):
    """The test metrics the gate may compare (higher is better)."""

    accuracy = "accuracy"
    macro_f1 = "macro_f1"


class ClassifierData(DataConfig):
    task: Literal["text-classification"] = TASK
    label_column: str = Field("label", description="Column holding the class (ids or strings).")


class ClassifierGate(GateConfig):
    metric: ClassifierMetric | None = Field(None, description="Test-split metric the gate compares; default macro_f1.")


class ClassifierPublish(PublishConfig):
    task: Literal["text-classification"] = TASK
    gate: ClassifierGate = Field(default_factory=ClassifierGate)


class ClassifierConfig(PipelineConfig):
    """A text classifier's pipeline: the shared sections with this kind's keys."""

    model_config = ConfigDict(extra="forbid", title="text-classification pipeline")

    task: Literal["text-classification"] = Field(TASK, description="What the model learns to do.")
    data: ClassifierData
    publish: ClassifierPublish = Field(default_factory=ClassifierPublish)


class ClassifierFacts(ModelFacts):
    """A classifier's facts: its label space (index = class id), and how its batches are padded."""

    task: Literal["text-classification"] = TASK
    label_names: list[str] = []
    pad_with_eos: bool = False  # the base tokenizer had no pad token (decoder-only models): padded with EOS
