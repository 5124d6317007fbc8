"""Provider batches (OpenAI Batch, Anthropic Message Batches) and the requests they carry.

- `batch_requests`: one row per teacher request a job sends through a batch, written when a
  chunk meets a request the response cache cannot answer (`services.teachers.batching`): the
  body as sent (`body`), what its ledger row will say (`intent`), its expected cost at batch
  prices, and its state: `queued` (waiting for a batch), `submitting` (in a batch being sent),
  `submitted` (at the provider), `done` (its answer is in the ledger: `call_id`) or `failed`
  (a permanent error, or out of submissions: `error_kind`, `error_message`). Unique per (job,
  fingerprint): a request is never queued twice for one job.
- `provider_batches`: one row per batch sent to a provider: the job and teacher it serves, our
  `tag` (sent as metadata where the provider keeps it, to find a batch again after a crash), the
  provider's id and status, request counts, the budget hold reserved for it in full, what it
  cost and what the same calls would have cost online. `state`: `submitting`, `in_progress`,
  `ended` (results ingested), `cancelled`, `failed`.
- `job_chunks.batch_wait`: the chunk has requests in a batch and waits for them (the reconciler
  leaves it alone; the batch poller queues it again once every request is answered).
- `teacher_calls.batch_id`: the ledger row was paid through that batch (at batch prices).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
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

REQUEST_OPEN_STATES = ("queued", "submitting", "submitted")


class ProviderBatch(TimestampMixin, Base):
    __tablename__ = "provider_batches"
    __table_args__ = (Index(None, "state"), Index(None, "job_id"))

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    job_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("generation_jobs.id", ondelete="CASCADE"))
    teacher: Mapped[str] = mapped_column(Text)  # the spec's text (no key: specs never hold one)
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(256))
    tag: Mapped[str] = mapped_column(String(64), unique=True)
    provider_batch_id: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    provider_status: Mapped[str | None] = mapped_column(String(32))
    requests: Mapped[int] = mapped_column(Integer, server_default="0")
    succeeded: Mapped[int] = mapped_column(Integer, server_default="0")
    errored: Mapped[int] = mapped_column(Integer, server_default="0")
    expired: Mapped[int] = mapped_column(Integer, server_default="0")
    cancelled: Mapped[int] = mapped_column(Integer, server_default="0")
    hold_id: Mapped[int | None] = mapped_column(BigInteger)
    reserved_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 8))
    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 8))
    online_cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 8))
    error: Mapped[str | None] = mapped_column(Text)
    submitting_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    polled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class BatchRequest(TimestampMixin, Base):
    __tablename__ = "batch_requests"
    __table_args__ = (
        UniqueConstraint("job_id", "fingerprint"),
        Index(None, "state", "job_id"),
        Index(None, "batch_id"),
        Index(None, "job_id", "chunk"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    job_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("generation_jobs.id", ondelete="CASCADE"))
    chunk: Mapped[int] = mapped_column(Integer)
    problem_id: Mapped[int | None] = mapped_column(BigInteger)
    teacher: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    batch_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("provider_batches.id", ondelete="SET NULL")
    )
    submissions: Mapped[int] = mapped_column(Integer, server_default="0")
    body: Mapped[dict[str, Any]] = mapped_column()
    intent: Mapped[dict[str, Any]] = mapped_column()
    estimate_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 8))
    call_id: Mapped[int | None] = mapped_column(BigInteger)
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


__all__ = [
    "REQUEST_OPEN_STATES",
    "BatchRequest",
    "ProviderBatch",
]
