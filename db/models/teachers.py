"""Teacher calls: one row per distinct request sent to a teacher, the response cache and the ledger.

`fingerprint` is the sha256 of the normalised request (provider, model, rendered messages,
generation options, sample index) and is unique: it is the key of the response cache, and
recording a call is an upsert on it, so a redelivered task never adds a row. A row whose
`status` is `ok` or `refused` holds a paid response (`response` is the raw body the provider
returned, never request headers) and is replayed instead of calling again; a `failed` row
(retries exhausted, or a permanent error) is not replayed, and a later success overwrites it,
adding its attempts to `attempts`.

`problem_id`, `mode`, `stage_mode`, `stage` and `prompt_version` say what the call was for;
a problem may be deleted without losing the ledger (the link becomes NULL). `cost_usd` is NULL
when the model has no price (never a made-up 0); `tokens_*` NULL when the provider sent no usage.
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
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import Base, BigIntPK, TimestampMixin

# in_flight: claimed by a worker that is calling now (or crashed while calling: once its claim
# has expired the outcome is unknown and may have been paid, and spend counts its estimate).
CALL_STATUSES = ("ok", "refused", "failed", "in_flight")
# Statuses whose response was paid for and is replayed from the cache.
REPLAYABLE_STATUSES = ("ok", "refused")


class TeacherCall(TimestampMixin, Base):
    __tablename__ = "teacher_calls"
    __table_args__ = (
        CheckConstraint(f"status IN {CALL_STATUSES!r}", name="status"),
        CheckConstraint("attempts >= 0", name="attempts"),
        CheckConstraint("sample_index >= 0", name="sample_index"),
        Index(None, "problem_id"),
        Index(None, "provider", "model"),
        Index(None, "created_at"),  # recent calls (dashboard, cache pruning by age)
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    problem_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("problems.id", ondelete="SET NULL"))
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(256))
    mode: Mapped[str] = mapped_column(String(8))
    stage_mode: Mapped[str] = mapped_column(String(8))
    stage: Mapped[str] = mapped_column(String(16))
    prompt_version: Mapped[str] = mapped_column(String(128))
    sample_index: Mapped[int] = mapped_column(Integer, server_default="0")
    # Generation options sent (temperature, max_tokens, ...), never a key or a key's variable.
    options: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16))
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    response_text: Mapped[str | None] = mapped_column(Text)
    tokens_in: Mapped[int | None] = mapped_column(Integer)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 8))
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, server_default="1")
    # The claim of an in-flight call: who is calling, until when the claim holds (renewed while
    # calling), and what the call may cost (counted in spend while its outcome is unknown).
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    claim_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    estimated_cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 8))
    response: Mapped[dict[str, Any] | None] = mapped_column()
    # The provider batch that paid for this answer (at batch prices); None for an online call.
    batch_id: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


__all__ = ["CALL_STATUSES", "REPLAYABLE_STATUSES", "TeacherCall"]
