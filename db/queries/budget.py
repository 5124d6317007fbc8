"""Queries on a budgeted job's money: holds taken before a rationale's calls, settled after, and
the spend figures. The caller owns the transaction.

A hold is a `budget_holds` row (amount, holder `host:pid:thread`, `lease_until`) and is counted
in the job's `reserved_usd`, which is always the sum of its holds. It is taken only when
`spent_usd + reserved_usd + amount <= budget_usd`, with the job row locked, so concurrent
takers on any host never overcommit. Settling deletes the hold and adds what the calls cost to
`spent_usd`.

A live hold is renewed by its holder's process (`renew_holds`). One whose lease has passed
belongs to a worker that died between taking it and settling it: what its calls cost is
unknown (they may have been paid, recorded in the ledger or not), so it stays counted, as an
outcome unknown, in the job's spend (`JobSpend.unknown_usd`) and against its budget; it is no
longer waited for. Time is the database's clock on Postgres, this host's on SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.orm import Session

from db.models import BudgetHold, GenerationJob


def _now(session: Session) -> Any:
    return func.now() if session.get_bind().dialect.name == "postgresql" else datetime.now(UTC)


def _later(session: Session, seconds: float) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.now() + timedelta(seconds=seconds)
    return datetime.now(UTC) + timedelta(seconds=seconds)


@dataclass(slots=True, frozen=True)
class HoldAttempt:
    """The outcome of `take_hold`: `hold_id` when the amount fits; otherwise how many holds of
    the job are live (being worked now: settling them may make room) and the job's figures."""

    hold_id: int | None
    live_holds: int
    budget_usd: Decimal | None
    spent_usd: Decimal
    reserved_usd: Decimal
    status: str | None  # None: the job is gone


def take_hold(session: Session, job_id: int, amount: Decimal, holder: str, ttl_s: float) -> HoldAttempt:
    """Hold `amount` dollars of the job's budget for `holder` for `ttl_s` seconds, if it fits."""
    # A write first: it locks the job row on Postgres and takes SQLite's write lock, so the
    # figures read next cannot change before the hold is inserted.
    session.execute(
        update(GenerationJob)
        .where(GenerationJob.id == job_id)
        .values(reserved_usd=GenerationJob.reserved_usd)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(
        select(
            GenerationJob.budget_usd,
            GenerationJob.spent_usd,
            GenerationJob.reserved_usd,
            GenerationJob.status,
        ).where(GenerationJob.id == job_id)
    ).first()
    if row is None:
        return HoldAttempt(None, 0, None, Decimal(0), Decimal(0), None)
    budget, spent, reserved, status = row
    if budget is None or spent + reserved + amount <= budget:
        hold_id = session.scalar(
            insert(BudgetHold)
            .values(job_id=job_id, amount_usd=amount, holder=holder, lease_until=_later(session, ttl_s))
            .returning(BudgetHold.id)
        )
        session.execute(
            update(GenerationJob)
            .where(GenerationJob.id == job_id)
            .values(reserved_usd=GenerationJob.reserved_usd + amount)
            .execution_options(synchronize_session=False)
        )
        return HoldAttempt(int(hold_id or 0), 0, budget, spent, reserved + amount, str(status))
    live = session.scalar(
        select(func.count()).where(BudgetHold.job_id == job_id, BudgetHold.lease_until >= _now(session))
    )
    return HoldAttempt(None, int(live or 0), budget, spent, reserved, str(status))


def settle_hold(session: Session, job_id: int, hold_id: int, spent: Decimal) -> None:
    """Release the hold and add `spent` (what its calls cost) to the job's spend. A hold already
    gone (never expected) still adds the spend."""
    amount = session.scalar(
        delete(BudgetHold).where(BudgetHold.id == hold_id).returning(BudgetHold.amount_usd)
    )
    released = amount if amount is not None else Decimal(0)
    floor = func.greatest if session.get_bind().dialect.name == "postgresql" else func.max
    session.execute(
        update(GenerationJob)
        .where(GenerationJob.id == job_id)
        .values(
            reserved_usd=floor(GenerationJob.reserved_usd - released, 0),
            spent_usd=GenerationJob.spent_usd + spent,
        )
        .execution_options(synchronize_session=False)
    )


def renew_holds(session: Session, ids: list[int], holder_prefix: str, ttl_s: float) -> int:
    """Push the leases of holds `ids` held by `holder_prefix...` (this process) `ttl_s` ahead."""
    if not ids:
        return 0
    result = session.execute(
        update(BudgetHold)
        .where(BudgetHold.id.in_(ids), BudgetHold.holder.startswith(holder_prefix, autoescape=True))
        .values(lease_until=_later(session, ttl_s))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(slots=True, frozen=True)
class JobSpend:
    """A job's money: `spent_usd` settled (the providers' reported cost of its calls),
    `held_usd` held by calls in flight now, `unknown_usd` held by workers that died while
    calling (module doc: may have been paid), and the budget."""

    budget_usd: Decimal | None
    spent_usd: Decimal
    held_usd: Decimal
    unknown_usd: Decimal
    live_holds: int
    unknown_holds: int

    @property
    def spent_incl_unknown_usd(self) -> Decimal:
        """What the job may have spent: settled, plus the outcomes unknown."""
        return self.spent_usd + self.unknown_usd


def job_spend(session: Session, job_id: int) -> JobSpend | None:
    """The job's spend figures (None when the job is gone): one query for "spent, outcomes
    unknown included"."""
    job = session.execute(
        select(GenerationJob.budget_usd, GenerationJob.spent_usd).where(GenerationJob.id == job_id)
    ).first()
    if job is None:
        return None
    live = BudgetHold.lease_until >= _now(session)
    held, unknown, live_n, unknown_n = session.execute(
        select(
            func.coalesce(func.sum(case((live, BudgetHold.amount_usd), else_=None)), 0),
            func.coalesce(func.sum(case((live, None), else_=BudgetHold.amount_usd)), 0),
            func.coalesce(func.sum(case((live, 1), else_=0)), 0),
            func.coalesce(func.sum(case((live, 0), else_=1)), 0),
        ).where(BudgetHold.job_id == job_id)
    ).one()
    return JobSpend(
        job.budget_usd,
        Decimal(job.spent_usd),
        Decimal(str(held)),
        Decimal(str(unknown)),
        int(live_n),
        int(unknown_n),
    )


__all__ = ["HoldAttempt", "JobSpend", "job_spend", "renew_holds", "settle_hold", "take_hold"]
