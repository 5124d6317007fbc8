"""Student training runs and evaluations.

- `training_runs`: one row per `kpdd train`. It keeps what the run was made of (the snapshot it
  read, the config as given and as resolved, the generated DeepSpeed config, the launch: world
  size, hostfile, run directory) and what it is doing: `state` with `state_reason`, the last
  step, loss, tokens/s per GPU, MFU and peak memory, streamed from the run's metrics while it
  runs. States: `queued` (on the Celery `training` queue), `preparing` (config being resolved),
  `running` (the DeepSpeed launcher is up), then one terminal state: `succeeded`, `failed` (the
  reason says why: a bad config, a launcher exit code and the last lines of its log, a worker
  that stopped sending heartbeats) or `cancelled`. `heartbeat_at` is renewed by whoever
  supervises the launcher; a live state with a stale heartbeat is a lost supervisor, and the
  listing marks it failed (see `db.queries.training.fail_stale_runs`).
- `evaluations`: one row per `kpdd eval` (or the evaluation after a run): the model, layout,
  mode, the datasets with their accuracy and failure counts (`results`), and where every
  prediction was written.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    false,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import Base, BigIntPK, TimestampMixin

RUN_STATES = ("queued", "preparing", "running", "succeeded", "failed", "cancelled")
RUN_LIVE_STATES = ("queued", "preparing", "running")
RUN_TERMINAL_STATES = ("succeeded", "failed", "cancelled")
EVAL_STATES = ("running", "succeeded", "failed")


class TrainingRun(TimestampMixin, Base):
    __tablename__ = "training_runs"
    __table_args__ = (CheckConstraint(f"state IN {RUN_STATES!r}", name="state"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), server_default="queued", index=True)
    state_reason: Mapped[str | None] = mapped_column(Text)
    # The snapshot read: its content id (from the manifest) and the directory given.
    snapshot_id: Mapped[str] = mapped_column(String(64), index=True)
    snapshot_path: Mapped[str] = mapped_column(Text)
    # The config file as given (path and text, so a queued run does not need the submitter's
    # file), the `--set` overrides, then the resolved config and the DeepSpeed config.
    config_path: Mapped[str] = mapped_column(Text)
    config_text: Mapped[str] = mapped_column(Text)
    overrides: Mapped[list[str]] = mapped_column()
    resolved_config: Mapped[dict[str, Any] | None] = mapped_column()
    deepspeed_config: Mapped[dict[str, Any] | None] = mapped_column()
    layout: Mapped[str | None] = mapped_column(String(16))
    # Launch: processes per node (GPUs), an optional hostfile's text for several nodes.
    num_gpus: Mapped[int] = mapped_column(Integer)
    hostfile: Mapped[str | None] = mapped_column(Text)
    world_size: Mapped[int | None] = mapped_column(Integer)
    run_dir: Mapped[str] = mapped_column(Text)
    resume: Mapped[str] = mapped_column(String(8), server_default="never")
    # Datasets to evaluate on after training (empty: none).
    eval_datasets: Mapped[list[str]] = mapped_column()
    submitted: Mapped[bool] = mapped_column(server_default=false())
    worker_host: Mapped[str | None] = mapped_column(String(255))
    launcher_pid: Mapped[int | None] = mapped_column(Integer)
    # Progress and the latest metrics, as the run's metrics.jsonl reports them.
    step: Mapped[int] = mapped_column(Integer, server_default="0")
    total_steps: Mapped[int | None] = mapped_column(Integer)
    last_loss: Mapped[float | None] = mapped_column(Float)
    tokens_per_s_per_gpu: Mapped[float | None] = mapped_column(Float)
    mfu: Mapped[float | None] = mapped_column(Float)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # first/last/min loss, mean throughput, padding efficiency, checkpoints, final model dir.
    metrics: Mapped[dict[str, Any]] = mapped_column()
    final_dir: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Evaluation(TimestampMixin, Base):
    __tablename__ = "evaluations"
    __table_args__ = (CheckConstraint(f"state IN {EVAL_STATES!r}", name="state"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL"), index=True
    )
    state: Mapped[str] = mapped_column(String(16), server_default="running")
    state_reason: Mapped[str | None] = mapped_column(Text)
    model_dir: Mapped[str] = mapped_column(Text)
    layout: Mapped[str | None] = mapped_column(String(16))
    mode: Mapped[str | None] = mapped_column(String(8))
    datasets: Mapped[list[str]] = mapped_column()
    limit: Mapped[int | None] = mapped_column(Integer)
    # {dataset: {n, correct, accuracy, failures: {kind: count}}} and the overall figures.
    results: Mapped[dict[str, Any]] = mapped_column()
    accuracy: Mapped[float | None] = mapped_column(Float)
    out_dir: Mapped[str] = mapped_column(Text)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


__all__ = ["EVAL_STATES", "RUN_LIVE_STATES", "RUN_STATES", "RUN_TERMINAL_STATES", "Evaluation", "TrainingRun"]
