"""Generation jobs, their per-problem work items, and the rationales they produce.

- `generation_jobs`: one row per `kpdd generate`, holding its full parameters, its state and its
  money (`budget_usd`, `spent_usd` settled, `reserved_usd` held by calls in flight).
- `job_problems`: one row per (job, problem): the unit of progress and recovery. A problem is in
  exactly one state: `pending` (queued or in flight), or terminal: `done` (every required
  rationale attempted), `failed` (a permanent error or retries exhausted), `budget` (the job's
  budget ran out before it), `cancelled`. Work is queued in chunks of problems (`chunk`), and
  `kpdd resume` re-queues every chunk that still has a pending problem.
- `rationales`: one row per (problem, provider, model, mode, prompt version, sample index) —
  the identity of a rationale, unique, so a redelivered task upserts instead of duplicating.
  It keeps the key points, the verdict and how it was judged, and what it cost.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import Base, BigIntPK, TimestampMixin

JOB_STATUSES = ("queued", "running", "completed", "cancelled", "budget_exhausted", "failed")
JOB_TERMINAL_STATUSES = ("completed", "cancelled", "budget_exhausted", "failed")
PROBLEM_STATES = ("pending", "done", "failed", "budget", "cancelled")
# valid: the answer matched; invalid: it did not; unparsed: the teacher's output could not be
# used (malformed, truncated, refused, empty); failed: the call itself failed (after retries).
VERDICTS = ("valid", "invalid", "unparsed", "failed")


class GenerationJob(TimestampMixin, Base):
    __tablename__ = "generation_jobs"
    __table_args__ = (
        CheckConstraint(f"status IN {JOB_STATUSES!r}", name="status"),
        CheckConstraint("samples >= 1", name="samples"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    status: Mapped[str] = mapped_column(String(24), server_default="queued")
    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"), index=True)
    split: Mapped[str | None] = mapped_column(String(64))
    # [{"spec": "openai:gpt-4o-mini", "options": {...}, "requests_per_minute": ..., ...}]
    teachers: Mapped[list[dict[str, Any]]] = mapped_column()
    modes: Mapped[list[str]] = mapped_column()
    stage_mode: Mapped[str] = mapped_column(String(8))
    samples: Mapped[int] = mapped_column(Integer)
    until_valid: Mapped[int | None] = mapped_column(Integer)
    max_attempts: Mapped[int | None] = mapped_column(Integer)
    problem_limit: Mapped[int | None] = mapped_column(Integer)
    chunk_size: Mapped[int] = mapped_column(Integer)
    total_problems: Mapped[int] = mapped_column(Integer, server_default="0")
    budget_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    spent_usd: Mapped[Decimal] = mapped_column(Numeric(14, 8), server_default="0")
    reserved_usd: Mapped[Decimal] = mapped_column(Numeric(14, 8), server_default="0")
    # The parameters exactly as given (the command line, resolved), for lineage.
    params: Mapped[dict[str, Any]] = mapped_column()
    # What the submitter's configuration said about things that change results (simulator URL,
    # price table, provider keys present); a worker whose own differs says so on the job.
    submitted_config: Mapped[dict[str, Any] | None] = mapped_column()
    stop_reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class JobProblem(Base):
    __tablename__ = "job_problems"
    __table_args__ = (
        CheckConstraint(f"state IN {PROBLEM_STATES!r}", name="state"),
        Index(None, "job_id", "chunk"),
        Index(None, "job_id", "state"),
    )

    job_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("generation_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    problem_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("problems.id", ondelete="CASCADE"), primary_key=True
    )
    chunk: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), server_default="pending")
    # Times a worker started this problem (redeliveries and retries included).
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Rationale(TimestampMixin, Base):
    __tablename__ = "rationales"
    __table_args__ = (
        UniqueConstraint(
            "problem_id",
            "provider",
            "model",
            "mode",
            "prompt_version",
            "sample_index",
            "options_key",
            name="uq_rationales_identity",
        ),
        CheckConstraint(f"verdict IN {VERDICTS!r}", name="verdict"),
        CheckConstraint("mode IN ('cot', 'pot')", name="mode"),
        Index(None, "job_id"),
        Index(None, "created_at"),  # throughput over time (dashboard)
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    problem_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("problems.id", ondelete="CASCADE"))
    # The job that produced it (a later job replaying the same calls does not take it over).
    job_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("generation_jobs.id", ondelete="SET NULL")
    )
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(256))
    mode: Mapped[str] = mapped_column(String(8))
    stage_mode: Mapped[str] = mapped_column(String(8))
    prompt_version: Mapped[str] = mapped_column(String(128))
    sample_index: Mapped[int] = mapped_column(Integer)
    # Short hash of the generation options (temperature, top_p, max_tokens, ...) the rationale
    # was made with: part of its identity, so a job at other options does not silently reuse it.
    # '' marks rationales stored before options were part of the identity.
    options_key: Mapped[str] = mapped_column(String(16), server_default="")
    core_question: Mapped[str | None] = mapped_column(Text)
    solving_info: Mapped[list[str] | None] = mapped_column()
    solution_text: Mapped[str | None] = mapped_column(Text)
    final_answer_text: Mapped[str | None] = mapped_column(Text)
    program: Mapped[str | None] = mapped_column(Text)
    # The answer as judged: extracted from CoT text, or computed by running the program.
    answer: Mapped[str | None] = mapped_column(Text)
    verdict: Mapped[str] = mapped_column(String(16))
    # Finer reason: match, mismatch, no_answer, ambiguous, timeout, error, malformed, rate_limit...
    verdict_kind: Mapped[str | None] = mapped_column(String(32))
    judged_by: Mapped[str | None] = mapped_column(String(16))  # gold | consensus
    verdict_details: Mapped[dict[str, Any] | None] = mapped_column()
    call_ids: Mapped[list[int]] = mapped_column()
    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 8))
    tokens_in: Mapped[int | None] = mapped_column(Integer)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
