"""The monitor's thresholds: one typed section (the monitor flow's form shows it), defaults measured in
docs/monitoring.md (no false alarm on 20 unshifted batches of 400 demo tickets)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..config import TrackingConfig


class Thresholds(BaseModel):
    """When a score alarms. p-values alarm below their threshold, effect sizes above."""

    model_config = ConfigDict(extra="forbid")

    p_value: float = Field(0.001, gt=0, lt=1, description="A test's p-value below this alarms (chi-square, KS). "
                           "Under no drift each test alarms falsely at this rate.")
    mmd_p_value: float = Field(0.005, gt=0, lt=1, description="The embedding MMD permutation test's p-value below "
                               "this alarms (its false-alarm rate; at least 1/(permutations+1)).")
    permutations: int = Field(399, ge=19, le=5000, description="Permutations of the MMD test.")
    psi: float = Field(0.2, gt=0, description="Population stability index of the predicted labels above this alarms "
                       "(0.1 moderate, 0.2 large, by the usual convention).")
    confidence_drop: float = Field(0.05, gt=0, le=1, description="Mean top probability: reference minus batch "
                                   "above this alarms.")
    low_confidence: float = Field(0.5, gt=0, lt=1, description="A row is unsure when its top probability is below.")
    low_confidence_rise: float = Field(0.15, gt=0, le=1, description="The share of unsure rows rising by more "
                                       "than this alarms.")
    unknown_word_rise: float = Field(0.05, gt=0, le=1, description="The share of words the reference never had "
                                     "rising by more than this alarms.")
    perplexity_ratio: float = Field(1.5, gt=1, description="Causal LMs: the batch's median prompt perplexity over "
                                    "the reference's above this alarms.")
    truncated_rise: float = Field(0.1, gt=0, le=1, description="Causal LMs: the share of answers cut at the token "
                                  "limit rising by more than this alarms.")
    accuracy_drop: float = Field(0.02, ge=0, le=1, description="Live accuracy: degraded when the interval's upper "
                                 "bound is below the card's figure minus this.")
    confidence_level: float = Field(0.95, gt=0.5, lt=1, description="Of the live-accuracy intervals.")
    min_rows: int = Field(50, ge=10, description="A batch with fewer rows gets no verdict (too few to test).")


class BatchSource(BaseModel):
    """The new rows: a Hub dataset at a revision, an s3:// or local folder of files, or a batch inference run's
    summary (`<store>/batch/<flow run id>/summary.json`: its dataset, sha and split, and the model it used)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="Hub dataset repo id, s3:// or local folder, or a batch run's summary.json URI.")
    revision: str = Field("main", description="Branch, tag or sha of a Hub dataset (the newest: main).")
    split: str = Field("test", description="The split holding the new rows.")
    text_column: str = Field("text", description="The model's input column.")
    label_column: str | None = Field("label", description="Labels, when they have arrived (scored as live "
                                     "accuracy); absent or null: drift only.")
    window: int | None = Field(None, ge=1, description="Only the newest N rows (the end of the split; by the `time` "
                               "column when the rows have one).")
    since_hours: float | None = Field(None, gt=0, description="Only rows whose `time` column (epoch seconds, as the "
                                      "server's request sample stamps them: split `served`) is within the last N "
                                      "hours.")


class MonitorConfig(BaseModel):
    """The monitor flow's form: which model, which new rows, when to alarm."""

    model_config = ConfigDict(extra="forbid")

    model_repo_id: str | None = Field(None, description="The model repo. Null with a batch run's summary: the model "
                                      "that batch ran with.")
    model_revision: str = Field("main", description="Branch, tag or sha; main is the published one.")
    batch: BatchSource
    thresholds: Thresholds = Field(default_factory=Thresholds)
    emit_events: bool = Field(True, description="Emit hubflow.model.drift / hubflow.model.degraded on an alarm.")
    cooldown_hours: float = Field(168, ge=0, description="One event per model sha, event and this many hours: "
                                  "nightly batches of one shift start one retrain (0: every alarm emits).")
    artifact_store: str = Field("./.hubflow/store", description="Where the report and its figure are written.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="With mlflow: each report is an "
                                     "MLflow run (scores as metrics, verdicts as tags, report.json as artifact).")
