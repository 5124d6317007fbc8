"""Corpora and their problems.

A problem is identified by (corpus, split, source_id). Its gold answer is kept exactly as the
source wrote it (`gold_answer`) and normalised (`gold_kind`, `gold_normalised`): for a number the
exact rational as text (`"18"`, `"-5/2"`), for anything else normalised text; `none` when the
corpus has no answers (its pseudo-gold then comes from teacher consensus). `content_hash` is the
sha256 of the question and the raw gold answer: re-ingesting an identical record is a no-op, and a
record whose id is reused with other content is reported rather than silently overwritten.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.models.base import Base, BigIntPK, TimestampMixin

GOLD_KINDS = ("number", "text", "none")


class Corpus(TimestampMixin, Base):
    __tablename__ = "corpora"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    format: Mapped[str] = mapped_column(String(32))
    description: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    problems: Mapped[list[Problem]] = relationship(back_populates="corpus", lazy="raise")


class Problem(TimestampMixin, Base):
    __tablename__ = "problems"
    __table_args__ = (
        UniqueConstraint("corpus_id", "split", "source_id"),
        CheckConstraint(f"gold_kind IN {GOLD_KINDS!r}", name="gold_kind"),
        Index(None, "content_hash"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(64))
    source_id: Mapped[str] = mapped_column(String(256))
    question: Mapped[str] = mapped_column(Text)
    gold_answer: Mapped[str | None] = mapped_column(Text)
    gold_kind: Mapped[str] = mapped_column(String(16))
    gold_normalised: Mapped[str | None] = mapped_column(Text)
    worked_solution: Mapped[str | None] = mapped_column(Text)
    # Source fields worth keeping that are not part of the contract (equations, grade, type).
    extra: Mapped[dict[str, Any] | None] = mapped_column()
    content_hash: Mapped[str] = mapped_column(String(64))

    corpus: Mapped[Corpus] = relationship(back_populates="problems", lazy="raise")


__all__ = ["GOLD_KINDS", "Corpus", "Problem"]
