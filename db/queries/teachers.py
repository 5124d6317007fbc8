"""Queries on teacher calls: cache lookup, idempotent recording, cost totals.

Recording is an upsert on the request fingerprint. Its rule: a paid response (`ok`, `refused`)
is never replaced; a `failed` row is replaced by whatever comes next, its attempts added. So a
redelivered task, or two workers racing on the same request, leave one row. In a race both
workers may have paid; the ledger keeps the first response recorded (the cache lookup before
each call makes the race window the length of one call).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, TextClause, bindparam, case, func, select, text
from sqlalchemy.orm import Session

from db.models import REPLAYABLE_STATUSES, TeacherCall


@dataclass(slots=True)
class NewTeacherCall:
    """The column values of one call to record (see `db.models.teachers` for their meaning)."""

    fingerprint: str
    provider: str
    model: str
    mode: str
    stage_mode: str
    stage: str
    prompt_version: str
    status: str
    options: dict[str, Any] = field(default_factory=dict)
    problem_id: int | None = None
    sample_index: int = 0
    error_kind: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    finish_reason: str | None = None
    response_text: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: Decimal | None = None
    latency_ms: int | None = None
    attempts: int = 1
    response: dict[str, Any] | None = None


@dataclass(slots=True, frozen=True)
class StoredCall:
    """What a replay needs of a stored paid response (not the raw body)."""

    id: int
    fingerprint: str
    status: str
    response_text: str | None
    finish_reason: str | None
    tokens_in: int | None
    tokens_out: int | None
    cost_usd: Decimal | None
    latency_ms: int | None
    error_kind: str | None


_STORED_COLUMNS = [getattr(TeacherCall.__table__.c, f.name) for f in fields(StoredCall)]


def find_replayable_call(session: Session | Connection, fingerprint: str) -> StoredCall | None:
    """The stored paid response for `fingerprint` (status `ok` or `refused`), if any. Reads only
    the columns a replay needs, as plain values (this runs before every teacher call)."""
    row = session.execute(
        select(*_STORED_COLUMNS).where(
            TeacherCall.fingerprint == fingerprint, TeacherCall.status.in_(REPLAYABLE_STATUSES)
        )
    ).first()
    return None if row is None else StoredCall(*row)


def _upsert_statement() -> TextClause:
    """The recording upsert as one parameterised statement, the same SQL on Postgres and SQLite.

    Written as text on purpose: SQLAlchemy never caches the compiled form of Postgres's
    `INSERT ... ON CONFLICT` construct, and compiling it on every call cost more CPU than the call
    itself. Values travel as parameters; JSON and money columns keep their types."""
    names = [f.name for f in fields(NewTeacherCall)]
    updates = [f"{n} = excluded.{n}" for n in names if n not in ("fingerprint", "attempts")]
    sql = (
        f"INSERT INTO teacher_calls ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)}) "
        f"ON CONFLICT (fingerprint) DO UPDATE SET {', '.join(updates)}, "
        "attempts = teacher_calls.attempts + excluded.attempts, updated_at = CURRENT_TIMESTAMP "
        "WHERE teacher_calls.status = 'failed' RETURNING id"
    )
    columns = TeacherCall.__table__.c
    typed = [bindparam(n, type_=columns[n].type) for n in ("options", "response", "cost_usd")]
    return text(sql).bindparams(*typed)


_UPSERT = _upsert_statement()


def record_call(session: Session | Connection, call: NewTeacherCall) -> tuple[int, bool]:
    """Upsert `call` on its fingerprint; returns (row id, whether this call's values were written).

    False means a paid response was already stored for the fingerprint and was kept."""
    values = {f.name: getattr(call, f.name) for f in fields(NewTeacherCall)}
    row_id = session.execute(_UPSERT, values).scalar()
    if row_id is not None:
        return int(row_id), True
    existing = session.scalar(select(TeacherCall.id).where(TeacherCall.fingerprint == call.fingerprint))
    assert existing is not None, "the conflicting row cannot vanish inside the transaction"
    return int(existing), False


@dataclass(slots=True)
class TeacherCostSummary:
    """Totals for one teacher. `cost_usd` sums priced calls only; `unpriced_calls` counts the
    paid calls without a price."""

    provider: str
    model: str
    calls: int
    paid_calls: int
    failed_calls: int
    tokens_in: int
    tokens_out: int
    cost_usd: Decimal
    unpriced_calls: int


def teacher_cost_summaries(
    session: Session, problem_ids: list[int] | None = None
) -> list[TeacherCostSummary]:
    """Per (provider, model) totals over every recorded call, or the calls for `problem_ids`."""
    paid = TeacherCall.status.in_(REPLAYABLE_STATUSES)
    query = (
        select(
            TeacherCall.provider,
            TeacherCall.model,
            func.count(),
            func.sum(case((paid, 1), else_=0)),
            func.sum(case((TeacherCall.status == "failed", 1), else_=0)),
            func.coalesce(func.sum(TeacherCall.tokens_in), 0),
            func.coalesce(func.sum(TeacherCall.tokens_out), 0),
            func.sum(TeacherCall.cost_usd),
            func.sum(case((paid & TeacherCall.cost_usd.is_(None), 1), else_=0)),
        )
        .group_by(TeacherCall.provider, TeacherCall.model)
        .order_by(TeacherCall.provider, TeacherCall.model)
    )
    if problem_ids is not None:
        query = query.where(TeacherCall.problem_id.in_(problem_ids))
    summaries = []
    for provider, model, calls, paid_calls, failed, tokens_in, tokens_out, cost, unpriced in session.execute(
        query
    ):
        summaries.append(
            TeacherCostSummary(
                provider,
                model,
                int(calls),
                int(paid_calls or 0),
                int(failed or 0),
                int(tokens_in),
                int(tokens_out),
                Decimal(str(cost)) if cost is not None else Decimal(0),
                int(unpriced or 0),
            )
        )
    return summaries


def count_calls(session: Session, status: str | None = None) -> int:
    """How many call rows there are (of one status, if given)."""
    query = select(func.count()).select_from(TeacherCall)
    if status is not None:
        query = query.where(TeacherCall.status == status)
    return int(session.scalar(query) or 0)


__all__ = [
    "NewTeacherCall",
    "StoredCall",
    "TeacherCostSummary",
    "count_calls",
    "find_replayable_call",
    "record_call",
    "teacher_cost_summaries",
]
