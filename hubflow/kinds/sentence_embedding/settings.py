"""What only a sentence-embedding recipe says, composed into `EmbeddingConfig` (the pipeline config of
`task: sentence-embedding`): which columns hold the pairs and the corpus, the loss, the pooling, the gate's metrics.

    EmbeddingData    data: anchor/positive/negative/score columns, test relevance, the corpus split
    EmbeddingTrain   train: loss (mnrl | cosine), pooling (mean | cls | max | from the base), normalize
    resolve_pooling(model_dir, pooling)   None -> the base model's sentence-transformers pooling, else mean
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from ...config import DataConfig, GateConfig, PipelineConfig, PublishConfig, TrainConfig
from ...refs import ModelFacts

TASK = "sentence-embedding"


class Loss(str, Enum):
    """What training minimises."""

    mnrl = "mnrl"  # Multiple Negatives Ranking: each anchor must pick its positive among the batch's candidates
    cosine = "cosine"  # CosineSimilarityLoss: cosine(anchor, positive) regressed onto a score in [-1, 1]


class Pooling(str, Enum):
    """How token vectors become one sentence vector (sentence-transformers' Pooling modes)."""

    mean = "mean"  # average of the real (unpadded) tokens
    cls = "cls"  # the first token's vector
    max = "max"  # per-dimension maximum over the real tokens


class EmbeddingData(DataConfig):
    task: Literal["sentence-embedding"] = TASK
    anchor_column: str = Field("anchor", description="Column holding the anchor text (the query).")
    positive_column: str = Field("positive", description="Column holding the text that matches the anchor.")
    negative_column: str | None = Field(
        None, description="Column holding a hard negative (similar-looking but wrong); mnrl adds it to the candidates.")
    score_column: str | None = Field(
        None, description="Column holding a similarity score in [-1, 1] per pair; needed by loss=cosine.")
    relevant_column: str = Field(
        "relevant_ids", description="Column of the test split listing each query's relevant corpus ids; when the "
        "test split has no such column, its pairs are the queries and its positives the corpus.")
    corpus_split: str = Field(
        "corpus", description="Split of the source holding the corpus the test queries search (used with "
        "relevant_column).")
    corpus_text_column: str = Field("text", description="Column of the corpus split holding the document text.")
    corpus_id_column: str = Field("id", description="Column of the corpus split holding the document id.")

    @model_validator(mode="after")
    def _distinct(self) -> EmbeddingData:
        cols = [c for c in (self.anchor_column, self.positive_column, self.negative_column, self.score_column) if c]
        if len(set(cols)) != len(cols):
            raise ValueError(f"anchor, positive, negative and score columns must differ; got {cols}")
        return self

    def pair_columns(self) -> dict[str, str]:
        """Role -> source column for the pair splits (train, validation, a pair test split)."""
        roles = {"anchor": self.anchor_column, "positive": self.positive_column, "negative": self.negative_column,
                 "score": self.score_column}
        return {role: col for role, col in roles.items() if col}


class EmbeddingTrain(TrainConfig):
    task: Literal["sentence-embedding"] = TASK
    loss: Loss = Field(Loss.mnrl, description="mnrl: in-batch negatives (pairs, optional hard negatives). cosine: "
                       "regress cosine similarity onto data.score_column.")
    scale: float = Field(20.0, gt=0, le=100, description="mnrl: similarities are multiplied by this before the "
                         "softmax (sentence-transformers' default, 20).")
    pooling: Pooling | None = Field(
        None, description="Token pooling; default: the base model's sentence-transformers pooling "
        "(1_Pooling/config.json) when it has one, else mean.")
    normalize: bool = Field(True, description="L2-normalise sentence vectors (then dot product = cosine similarity).")


class EmbeddingMetric(str, Enum):
    """The test metrics the gate may compare (higher is better)."""

    ndcg_at_10 = "ndcg_at_10"
    mrr_at_10 = "mrr_at_10"
    recall_at_1 = "recall_at_1"
    recall_at_10 = "recall_at_10"


class EmbeddingGate(GateConfig):
    metric: EmbeddingMetric | None = Field(None, description="Test-split metric the gate compares; default ndcg_at_10.")


class EmbeddingPublish(PublishConfig):
    task: Literal["sentence-embedding"] = TASK
    gate: EmbeddingGate = Field(default_factory=EmbeddingGate)


class EmbeddingConfig(PipelineConfig):
    """A sentence-embedding model's pipeline: the shared sections with this kind's keys."""

    model_config = ConfigDict(extra="forbid", title="sentence-embedding pipeline")

    task: Literal["sentence-embedding"] = Field(TASK, description="What the model learns to do.")
    data: EmbeddingData
    train: EmbeddingTrain = Field(default_factory=EmbeddingTrain)
    publish: EmbeddingPublish = Field(default_factory=EmbeddingPublish)

    @model_validator(mode="after")
    def _loss_has_its_data(self) -> EmbeddingConfig:
        if self.train.loss is Loss.cosine and not self.data.score_column:
            raise ValueError("train.loss=cosine regresses a similarity score: set data.score_column")
        return self


class EmbeddingFacts(ModelFacts):
    """An embedding model's facts: its tokens per input (the pooling and normalization live in its
    sentence-transformers files)."""

    task: Literal["sentence-embedding"] = TASK


def resolve_pooling(model_dir: str | Path, pooling: Pooling | str | None) -> Pooling:
    """The pooling to use: the one asked for, else the one a sentence-transformers folder declares, else mean."""
    if pooling is not None:
        return Pooling(pooling)
    return read_pooling(model_dir) or Pooling.mean


def read_pooling(model_dir: str | Path) -> Pooling | None:
    """`1_Pooling/config.json` of a sentence-transformers folder (either config layout) -> its mode, or None."""
    path = Path(model_dir, "1_Pooling", "config.json")
    if not path.exists():
        return None
    config = json.loads(path.read_text())
    if isinstance(config.get("pooling_mode"), str):  # sentence-transformers >= 5 writes the mode by name
        mode = config["pooling_mode"]
    else:  # the layout every version reads: one boolean per mode
        modes = [m for m, key in (("cls", "pooling_mode_cls_token"), ("max", "pooling_mode_max_tokens"),
                                  ("mean", "pooling_mode_mean_tokens")) if config.get(key)]
        mode = modes[0] if len(modes) == 1 else None
    if mode not in Pooling.__members__:
        raise ValueError(f"{path}: pooling {config} is not one of {[p.value for p in Pooling]} (hubflow's encoder "
                         "implements those); set the pooling explicitly")
    return Pooling(mode)
