"""Queries on the response cache (`teacher_calls` seen as a cache): replacing a stored response
(`--refresh`), listing entries, pruning them. The caller owns the transaction.

An entry is one `teacher_calls` row: a request fingerprint and its outcome. Pruning deletes rows
and never touches one that is `in_flight` (a worker is calling now, or crashed while calling and
its outcome may have been paid: spend counts it until it is settled). Rationales keep the ids of
their calls in `call_ids` (a JSON list, no foreign key): a pruned call leaves its rationales as
they are (text, verdict, cost), with ids that point at nothing, and asking that request again
pays for it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    TextClause,
    and_,
    cast,
    delete,
    func,
    select,
    true,
)
from sqlalchemy.orm import Session

from db.models import Rationale, TeacherCall
from db.queries.teachers import NewTeacherCall, call_upsert_statement

IN_FLIGHT = "in_flight"


def _replace_statement() -> TextClause:
    """`record_call`'s upsert, except that a paid response replaces a paid one too.

    A row is overwritten when the new outcome is a paid response (`ok`, `refused`) or the stored
    one is `failed`; a refresh that fails keeps the stored paid response (it is not worse than
    nothing). Attempts add up over failures and start again with a new paid response. The claim
    of an in-flight call is cleared: the row now holds an outcome."""
    return call_upsert_statement(
        "CASE WHEN teacher_calls.status = 'failed' "
        "THEN teacher_calls.attempts + excluded.attempts ELSE excluded.attempts END",
        "excluded.status IN ('ok', 'refused') OR teacher_calls.status = 'failed'",
    )


_REPLACE = _replace_statement()


def replace_call(session: Session | Connection, call: NewTeacherCall) -> tuple[int, bool]:
    """Store `call` over whatever its fingerprint holds (see `_replace_statement`); returns
    (row id, whether this call's values were written). The row keeps its id, so rationales that
    point at it now point at the new response."""
    values = {f.name: getattr(call, f.name) for f in fields(NewTeacherCall)}
    row_id = session.execute(_REPLACE, values).scalar()
    if row_id is not None:
        return int(row_id), True
    existing = session.scalar(select(TeacherCall.id).where(TeacherCall.fingerprint == call.fingerprint))
    assert existing is not None, "the conflicting row cannot vanish inside the transaction"
    return int(existing), False


@dataclass(slots=True, frozen=True)
class CacheFilter:
    """Which entries: by teacher (`provider:model` labels), prompt version, status, and last
    written before `older_than` (a moment). Empty or None: no condition."""

    teachers: Sequence[tuple[str, str]] = ()
    prompt_versions: Sequence[str] = ()
    statuses: Sequence[str] = ()
    older_than: datetime | None = None

    @property
    def empty(self) -> bool:
        return not (self.teachers or self.prompt_versions or self.statuses or self.older_than)

    def clause(self) -> ColumnElement[bool]:
        parts: list[ColumnElement[bool]] = []
        if self.teachers:
            parts.append(
                _or([and_(TeacherCall.provider == p, TeacherCall.model == m) for p, m in self.teachers])
            )
        if self.prompt_versions:
            parts.append(TeacherCall.prompt_version.in_(list(self.prompt_versions)))
        if self.statuses:
            parts.append(TeacherCall.status.in_(list(self.statuses)))
        if self.older_than is not None:
            parts.append(TeacherCall.updated_at < _utc(self.older_than))
        return and_(true(), *parts)


def _or(clauses: Sequence[ColumnElement[bool]]) -> ColumnElement[bool]:
    out = clauses[0]
    for clause in clauses[1:]:
        out = out | clause
    return out


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def as_utc(value: datetime | str | None) -> datetime | None:
    """A stored timestamp as an aware UTC datetime (SQLite gives naive UTC values, or text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return _utc(value)


@dataclass(slots=True)
class CacheGroup:
    """The entries of one (teacher, prompt version, status)."""

    provider: str
    model: str
    prompt_version: str
    status: str
    entries: int
    cost_usd: Decimal  # what the stored responses cost when they were paid for (priced ones)
    oldest: datetime | None  # last written
    newest: datetime | None

    @property
    def teacher(self) -> str:
        return f"{self.provider}:{self.model}"


def cache_groups(session: Session | Connection, where: CacheFilter) -> list[CacheGroup]:
    """The cache's entries grouped by teacher, prompt version and status, in that order."""
    rows = session.execute(
        select(
            TeacherCall.provider,
            TeacherCall.model,
            TeacherCall.prompt_version,
            TeacherCall.status,
            func.count(),
            func.coalesce(func.sum(TeacherCall.cost_usd), 0),
            func.min(TeacherCall.updated_at),
            func.max(TeacherCall.updated_at),
        )
        .where(where.clause())
        .group_by(TeacherCall.provider, TeacherCall.model, TeacherCall.prompt_version, TeacherCall.status)
        .order_by(TeacherCall.provider, TeacherCall.model, TeacherCall.prompt_version, TeacherCall.status)
    )
    return [
        CacheGroup(
            str(provider),
            str(model),
            str(version),
            str(status),
            int(count),
            Decimal(str(cost)),
            as_utc(oldest),
            as_utc(newest),
        )
        for provider, model, version, status, count, cost, oldest, newest in rows
    ]


def cached_teachers(session: Session | Connection) -> list[str]:
    """Every `provider:model` with an entry in the cache."""
    rows = session.execute(select(TeacherCall.provider, TeacherCall.model).distinct())
    return sorted(f"{p}:{m}" for p, m in rows)


def cached_prompt_versions(session: Session | Connection) -> list[str]:
    return sorted(str(v) for v in session.scalars(select(TeacherCall.prompt_version).distinct()))


def _prunable(where: CacheFilter) -> ColumnElement[bool]:
    return and_(where.clause(), TeacherCall.status != IN_FLIGHT)


def count_in_flight(session: Session | Connection, where: CacheFilter) -> int:
    """Entries that match `where` but are in flight (never pruned)."""
    query = select(func.count()).select_from(TeacherCall)
    return int(session.scalar(query.where(where.clause(), TeacherCall.status == IN_FLIGHT)) or 0)


def count_prunable(session: Session | Connection, where: CacheFilter) -> int:
    query = select(func.count()).select_from(TeacherCall).where(_prunable(where))
    return int(session.scalar(query) or 0)


def count_rationales_referencing(session: Session | Connection, where: CacheFilter) -> int:
    """Rationales whose `call_ids` name at least one entry that `prune(where)` would delete."""
    dialect = session.get_bind().dialect.name if isinstance(session, Session) else session.dialect.name
    if dialect == "postgresql":
        element = func.jsonb_array_elements_text(Rationale.call_ids).table_valued("value").render_derived()
    else:
        element = func.json_each(Rationale.call_ids).table_valued("value")
    pruned = (
        select(TeacherCall.id)
        .select_from(element)
        .join(TeacherCall, TeacherCall.id == cast(element.c.value, BigInteger))
        .where(_prunable(where))
    )
    query = select(func.count()).select_from(Rationale).where(pruned.exists())
    if where.teachers:  # a call belongs to the rationales of its own teacher
        query = query.where(
            _or([and_(Rationale.provider == p, Rationale.model == m) for p, m in where.teachers])
        )
    return int(session.scalar(query) or 0)


def prune(session: Session | Connection, where: CacheFilter) -> int:
    """Delete the entries matching `where`, never an in-flight one; returns how many."""
    result = session.execute(delete(TeacherCall).where(_prunable(where)))
    return int(getattr(result, "rowcount", 0) or 0)


__all__ = [
    "IN_FLIGHT",
    "CacheFilter",
    "CacheGroup",
    "as_utc",
    "cache_groups",
    "cached_prompt_versions",
    "cached_teachers",
    "count_in_flight",
    "count_prunable",
    "count_rationales_referencing",
    "prune",
    "replace_call",
]
