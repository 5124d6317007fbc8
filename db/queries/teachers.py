"""Queries on teacher calls: cache lookup, idempotent recording, cost totals.

Claims on requests in flight (`in_flight` rows, written before a call and settled after it) are
in `db.queries.claims`. A row left `in_flight` with an expired claim is an outcome unknown that
may have been paid: the spend figures here count its `estimated_cost_usd` (`ledger_spend`,
`teacher_cost_summaries`).

Recording without a claim (`record_call`) is an upsert on the request fingerprint. Its rule: a
paid response (`ok`, `refused`) is never replaced; a `failed` row is replaced by whatever comes
next, its attempts added; an `in_flight` row is replaced by a paid response (its holder, if alive,
then finds its claim gone). So a redelivered task, or two workers racing on the same request,
leave one row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, TextClause, TextualSelect, bindparam, case, func, select, text
from sqlalchemy.orm import Session

from db.models import REPLAYABLE_STATUSES, TeacherCall

IN_FLIGHT = "in_flight"


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
    batch_id: int | None = None  # the provider batch that paid for it (None: an online call)


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


_REPLAYABLE_IN = {
    # One statement shape for any number of fingerprints: an array on Postgres, a JSON array on
    # SQLite. Result columns typed like the table's (money comes back as Decimal on both).
    "postgresql": "fingerprint = ANY(:fingerprints)",
    "sqlite": "fingerprint IN (SELECT value FROM json_each(:fingerprints))",
}
_replayable_statements: dict[str, TextualSelect] = {}


def _replayable_statement(dialect: str) -> TextualSelect:
    statement = _replayable_statements.get(dialect)
    if statement is None:
        paid = ", ".join(f"'{s}'" for s in REPLAYABLE_STATUSES)
        sql = (
            f"SELECT {', '.join(c.name for c in _STORED_COLUMNS)} FROM teacher_calls "
            f"WHERE {_REPLAYABLE_IN[dialect]} AND status IN ({paid})"
        )
        statement = _replayable_statements[dialect] = text(sql).columns(*_STORED_COLUMNS)
    return statement


def find_replayable_calls(
    session: Session | Connection, fingerprints: Sequence[str]
) -> dict[str, StoredCall]:
    """`find_replayable_call` for many fingerprints in one query: fingerprint -> the stored paid
    response, for those that have one."""
    if not fingerprints:
        return {}
    dialect = _dialect(session)
    values: Any = list(fingerprints) if dialect == "postgresql" else orjson.dumps(list(fingerprints)).decode()
    rows = session.execute(_replayable_statement(dialect), {"fingerprints": values})
    return {call.fingerprint: call for call in (StoredCall(*row) for row in rows)}


def call_upsert_statement(attempts: str, where: str) -> TextClause:
    """An upsert of a `NewTeacherCall` on its fingerprint, as one parameterised statement (the
    same SQL on Postgres and SQLite), overwriting the stored row where `where` holds, with
    `attempts` as the new attempt count; it clears the claim of an in-flight call and returns
    the row id when it wrote.

    Written as text on purpose: SQLAlchemy never caches the compiled form of Postgres's
    `INSERT ... ON CONFLICT` construct, and compiling it on every call cost more CPU than the call
    itself. Values travel as parameters; JSON and money columns keep their types."""
    names = [f.name for f in fields(NewTeacherCall)]
    updates = [f"{n} = excluded.{n}" for n in names if n not in ("fingerprint", "attempts")]
    sql = (
        f"INSERT INTO teacher_calls ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)}) "
        f"ON CONFLICT (fingerprint) DO UPDATE SET {', '.join(updates)}, attempts = {attempts}, "
        f"claimed_by = NULL, claim_until = NULL, updated_at = CURRENT_TIMESTAMP WHERE {where} RETURNING id"
    )
    columns = TeacherCall.__table__.c
    typed = [bindparam(n, type_=columns[n].type) for n in ("options", "response", "cost_usd")]
    return text(sql).bindparams(*typed)


def _upsert_statement() -> TextClause:
    """The recording upsert: a failed row or an in-flight claim takes the outcome; a stored paid
    response is kept; attempts add up."""
    return call_upsert_statement(
        "teacher_calls.attempts + excluded.attempts",
        "teacher_calls.status = 'failed' "
        "OR (teacher_calls.status = 'in_flight' AND excluded.status IN ('ok', 'refused'))",
    )


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


def _dialect(session: Session | Connection) -> str:
    bind = session.get_bind() if isinstance(session, Session) else session
    return bind.dialect.name


def recent_output_tokens(
    session: Session | Connection, provider: str, model: str, prompt_version: str, limit: int
) -> list[int]:
    """Output tokens of the last `limit` answered (`ok`) calls of this teacher and prompt version."""
    return [
        int(n or 0)
        for n in session.scalars(
            select(TeacherCall.tokens_out)
            .where(
                TeacherCall.provider == provider,
                TeacherCall.model == model,
                TeacherCall.prompt_version == prompt_version,
                TeacherCall.status == "ok",
                TeacherCall.tokens_out.is_not(None),
            )
            .order_by(TeacherCall.id.desc())
            .limit(limit)
        )
    ]


def _unknown_outcome(session: Session | Connection) -> Any:
    """Rows whose outcome is unknown: `in_flight` with a claim that expired (its holder died)."""
    now = func.now() if _dialect(session) == "postgresql" else datetime.now(UTC)
    return (TeacherCall.status == IN_FLIGHT) & (
        TeacherCall.claim_until.is_(None) | (TeacherCall.claim_until < now)
    )


@dataclass(slots=True, frozen=True)
class LedgerSpend:
    """Money in the ledger: `paid_usd` reported by providers for stored responses (priced ones);
    `unknown_usd` the estimates of `unknown_calls` calls whose outcome is unknown (their worker
    died while calling: they may have been paid); `in_flight_calls` are being made now."""

    paid_usd: Decimal
    unknown_usd: Decimal
    unknown_calls: int
    in_flight_calls: int

    @property
    def spent_incl_unknown_usd(self) -> Decimal:
        return self.paid_usd + self.unknown_usd


def ledger_spend(session: Session | Connection, problem_ids: list[int] | None = None) -> LedgerSpend:
    """What the ledger says was spent, outcomes unknown included: over every call, or the calls
    for `problem_ids`."""
    unknown = _unknown_outcome(session)
    query = select(
        func.coalesce(func.sum(TeacherCall.cost_usd), 0),
        func.coalesce(func.sum(case((unknown, TeacherCall.estimated_cost_usd), else_=None)), 0),
        func.coalesce(func.sum(case((unknown, 1), else_=0)), 0),
        func.coalesce(func.sum(case((TeacherCall.status == IN_FLIGHT, 1), else_=0)), 0),
    )
    if problem_ids is not None:
        query = query.where(TeacherCall.problem_id.in_(problem_ids))
    paid, unknown_usd, unknown_calls, in_flight = session.execute(query).one()
    return LedgerSpend(
        Decimal(str(paid)), Decimal(str(unknown_usd)), int(unknown_calls), int(in_flight) - int(unknown_calls)
    )


@dataclass(slots=True)
class TeacherCostSummary:
    """Totals for one teacher. `cost_usd` sums priced calls only; `unpriced_calls` counts the
    paid calls without a price. `unknown_calls` are calls whose outcome is unknown (`in_flight`
    with an expired claim: the worker died while calling) and `unknown_usd` their estimated cost:
    they may have been paid, so spend figures add them (`spent_incl_unknown_usd`)."""

    provider: str
    model: str
    calls: int
    paid_calls: int
    failed_calls: int
    tokens_in: int
    tokens_out: int
    cost_usd: Decimal
    unpriced_calls: int
    unknown_calls: int = 0
    unknown_usd: Decimal = Decimal(0)

    @property
    def spent_incl_unknown_usd(self) -> Decimal:
        return self.cost_usd + self.unknown_usd


def teacher_cost_summaries(
    session: Session, problem_ids: list[int] | None = None
) -> list[TeacherCostSummary]:
    """Per (provider, model) totals over every recorded call, or the calls for `problem_ids`."""
    paid = TeacherCall.status.in_(REPLAYABLE_STATUSES)
    unknown = _unknown_outcome(session)
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
            func.sum(case((unknown, 1), else_=0)),
            func.sum(case((unknown, TeacherCall.estimated_cost_usd), else_=None)),
        )
        .group_by(TeacherCall.provider, TeacherCall.model)
        .order_by(TeacherCall.provider, TeacherCall.model)
    )
    if problem_ids is not None:
        query = query.where(TeacherCall.problem_id.in_(problem_ids))
    summaries = []
    for row in session.execute(query):
        (
            provider,
            model,
            calls,
            paid_calls,
            failed,
            tokens_in,
            tokens_out,
            cost,
            unpriced,
            unknown_n,
            unknown_usd,
        ) = row
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
                int(unknown_n or 0),
                Decimal(str(unknown_usd)) if unknown_usd is not None else Decimal(0),
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
    "IN_FLIGHT",
    "LedgerSpend",
    "NewTeacherCall",
    "StoredCall",
    "TeacherCostSummary",
    "count_calls",
    "find_replayable_call",
    "find_replayable_calls",
    "ledger_spend",
    "recent_output_tokens",
    "record_call",
    "teacher_cost_summaries",
]
