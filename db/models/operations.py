"""The operational side of generation jobs: who may run them, what went wrong, who holds what.

- `deployment`: one row naming this database's deployment (a uuid made by `kpdd db upgrade`).
  Every queued task carries it; a worker pointed at another database refuses the task instead of
  doing another deployment's work.
- `job_failures`: every failure a job met (kind, message, worker host, chunk, problem), so
  `kpdd status` can show failures by kind with their messages, and a job that ends `failed`
  says why.
- `job_chunks`: one row per queued chunk: when it was queued, which worker holds it and until
  when (a lease renewed while it runs), how many times it was delivered. The reconciler re-queues
  chunks whose lease expired with problems still pending; `kpdd resume` skips chunks held now.
- `job_rationales`: which rationales a job produced or reused, recorded when the job did so, so
  its figures and what `export --job` selects do not change when later jobs touch the same
  problems.
- `budget_holds`: money reserved by calls in flight, one row per reservation with its holder and
  lease; a hold whose worker died expires and is released.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, Numeric, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import Base, BigIntPK, TimestampMixin


class Deployment(TimestampMixin, Base):
    __tablename__ = "deployment"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    deployment_id: Mapped[str] = mapped_column(String(36))


class JobFailure(TimestampMixin, Base):
    __tablename__ = "job_failures"
    __table_args__ = (Index(None, "job_id", "kind"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    job_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("generation_jobs.id", ondelete="CASCADE"))
    chunk: Mapped[int | None] = mapped_column(Integer)
    problem_id: Mapped[int | None] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))
    # Problems of the chunk the failure touched (a chunk-level failure counts them all).
    problems: Mapped[int] = mapped_column(Integer, server_default="0")


class JobChunk(Base):
    __tablename__ = "job_chunks"

    job_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("generation_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # NULL when no worker holds it; a worker renews it while the chunk runs.
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(255))
    deliveries: Mapped[int] = mapped_column(Integer, server_default="0")
    # Set when sending the chunk to the broker failed (the reconciler or `resume` sends it).
    enqueue_error: Mapped[str | None] = mapped_column(Text)
    # The chunk waits for requests in a provider batch (db.models.batches).
    batch_wait: Mapped[bool] = mapped_column(Boolean, server_default="false")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class JobRationale(TimestampMixin, Base):
    __tablename__ = "job_rationales"
    __table_args__ = (Index(None, "rationale_id"),)

    job_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("generation_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    rationale_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("rationales.id", ondelete="CASCADE"), primary_key=True
    )
    # False: this job produced it; True: it was already stored and the job reused it.
    reused: Mapped[bool] = mapped_column(Boolean, server_default="false")
    # The verdict when the job recorded it (a later job may judge the same rationale again).
    verdict: Mapped[str] = mapped_column(String(16))


class BudgetHold(TimestampMixin, Base):
    __tablename__ = "budget_holds"
    __table_args__ = (Index(None, "job_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    job_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("generation_jobs.id", ondelete="CASCADE"))
    amount_usd: Mapped[Decimal] = mapped_column(Numeric(14, 8))
    holder: Mapped[str] = mapped_column(String(255))
    lease_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
