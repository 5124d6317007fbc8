"""Claims on teacher requests: the `teacher_calls` row of a call, written before it is sent and
settled after it. The caller owns the transaction.

Before a request is sent, its row is written (`claim_call`) with status `in_flight`, the holder
(`host:pid:thread`), `claim_until` (renewed while the call runs: `renew_claims`) and the call's
estimated cost. That row is the intent: a second caller of the same request finds the claim
live (`claim_state`) and waits for its outcome instead of paying again; a claim whose holder died
(`claim_until` passed) is taken over. After the call the holder writes the outcome over its
claim (`settle_claimed`, or `settle_call` when the claim may have been lost). A row left
`in_flight` with an expired claim is an outcome unknown that may have been paid; the spend
figures of `db.queries.teachers` count its estimate. Time is the database's clock on Postgres,
this host's on SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, TextClause, bindparam, case, func, select, text, update
from sqlalchemy.orm import Session

from db.models import REPLAYABLE_STATUSES, TeacherCall
from db.queries.teachers import IN_FLIGHT, NewTeacherCall, record_call


def _dialect(session: Session | Connection) -> str:
    bind = session.get_bind() if isinstance(session, Session) else session
    return bind.dialect.name


def _clock(dialect: str) -> tuple[str, str]:
    """SQL for now and for now + :ttl_s seconds: the database's clock on Postgres; on SQLite
    (one host) the `:now` and `:until` parameters `_clock_params` fills in."""
    if dialect == "postgresql":
        return "CURRENT_TIMESTAMP", "CURRENT_TIMESTAMP + make_interval(secs => :ttl_s)"
    return ":now", ":until"


def _clock_params(ttl_s: float) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"ttl_s": float(ttl_s), "now": now, "until": now + timedelta(seconds=ttl_s)}


def _typed(*names: str) -> list[Any]:
    """Bind parameters typed like their columns (JSON, money and time keep their types)."""
    columns = TeacherCall.__table__.c
    return [bindparam(n, type_=columns[n].type) for n in names]


def _clock_types(*sql: str) -> list[Any]:
    kind = TeacherCall.__table__.c.claim_until.type
    return [bindparam(part[1:], type_=kind) for part in sql if part.startswith(":")]


_CLAIM_EXTRA = ("claimed_by", "claim_until", "estimated_cost_usd")
_claim_statements: dict[tuple[str, bool], TextClause] = {}


def _claim_statement(dialect: str, refresh: bool) -> TextClause:
    """Insert the request's row as `in_flight`, or take an existing row that may be claimed: a
    `failed` one, an `in_flight` one whose claim expired, and with `refresh` a paid one no one
    is refreshing (its status and response stay until the new outcome is written)."""
    key = (dialect, refresh)
    statement = _claim_statements.get(key)
    if statement is not None:
        return statement
    now, until = _clock(dialect)
    names = [f.name for f in fields(NewTeacherCall)]
    values = [":" + n for n in names]
    # :orphan names a holder whose claims are known dead (see `claim_call`); NULL matches none.
    free = (
        f"(teacher_calls.claim_until IS NULL OR teacher_calls.claim_until < {now} "
        "OR teacher_calls.claimed_by = :orphan)"
    )
    takeable = f"teacher_calls.status = 'failed' OR (teacher_calls.status = 'in_flight' AND {free})"
    if refresh:
        takeable += f" OR (teacher_calls.status IN ('ok', 'refused') AND {free})"
    sql = (
        f"INSERT INTO teacher_calls ({', '.join(names + list(_CLAIM_EXTRA))}) "
        f"VALUES ({', '.join(values)}, :claimed_by, {until}, :estimated_cost_usd) "
        "ON CONFLICT (fingerprint) DO UPDATE SET "
        "status = CASE WHEN teacher_calls.status IN ('ok', 'refused') THEN teacher_calls.status "
        "ELSE 'in_flight' END, "
        "claimed_by = excluded.claimed_by, claim_until = excluded.claim_until, "
        "estimated_cost_usd = excluded.estimated_cost_usd, updated_at = CURRENT_TIMESTAMP "
        f"WHERE {takeable} RETURNING id"
    )
    typed = _typed("options", "response", "cost_usd", "estimated_cost_usd")
    if dialect != "postgresql":
        typed += _clock_types(now, until)
    statement = _claim_statements[key] = text(sql).bindparams(*typed)
    return statement


def claim_call(
    session: Session | Connection,
    call: NewTeacherCall,
    holder: str,
    ttl_s: float,
    estimated_cost_usd: Decimal | None,
    *,
    refresh: bool = False,
    orphan: str | None = None,
) -> int | None:
    """Claim `call`'s request for `holder` for `ttl_s` seconds: the row id when the claim is
    now this holder's (the row is `in_flight`, or with `refresh` keeps its paid response until
    the new one is written), None when the row holds a paid response (without `refresh`) or a
    live claim. `orphan`: a holder whose claim may be taken though it has not expired (the
    caller knows it is dead: a thread of its own process that no longer calls). `call` carries
    what the request is for; its outcome columns are not used."""
    dialect = _dialect(session)
    values = {f.name: getattr(call, f.name) for f in fields(NewTeacherCall)}
    values.update(
        status=IN_FLIGHT, attempts=0, claimed_by=holder, estimated_cost_usd=estimated_cost_usd, orphan=orphan
    )
    clock = _clock_params(ttl_s)
    if dialect == "postgresql":
        del clock["now"], clock["until"]
    else:
        del clock["ttl_s"]
    row_id = session.execute(_claim_statement(dialect, refresh), values | clock).scalar()
    return None if row_id is None else int(row_id)


@dataclass(slots=True, frozen=True)
class ClaimState:
    """A request's row as a waiting caller sees it. `live`: someone holds a claim on it now."""

    id: int
    status: str
    claimed_by: str | None
    live: bool


def claim_state(session: Session | Connection, fingerprint: str) -> ClaimState | None:
    """The row of `fingerprint` (None when there is none), and whether its claim is live."""
    now = func.now() if _dialect(session) == "postgresql" else datetime.now(UTC)
    live = case((TeacherCall.claim_until >= now, True), else_=False)
    row = session.execute(
        select(TeacherCall.id, TeacherCall.status, TeacherCall.claimed_by, live).where(
            TeacherCall.fingerprint == fingerprint
        )
    ).first()
    if row is None:
        return None
    row_id, status, claimed_by, is_live = row
    return ClaimState(int(row_id), str(status), claimed_by, bool(is_live) and claimed_by is not None)


def renew_claims(session: Session | Connection, ids: list[int], holder_prefix: str, ttl_s: float) -> int:
    """Push the claims `ids` of holders named `holder_prefix...` (this process) `ttl_s` seconds
    ahead; returns how many were renewed (a claim taken over meanwhile is not)."""
    if not ids:
        return 0
    if _dialect(session) == "postgresql":
        until: Any = func.now() + timedelta(seconds=ttl_s)
    else:
        until = datetime.now(UTC) + timedelta(seconds=ttl_s)
    result = session.execute(
        update(TeacherCall)
        .where(TeacherCall.id.in_(ids), TeacherCall.claimed_by.startswith(holder_prefix, autoescape=True))
        .values(claim_until=until)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def abandon_claim(session: Session | Connection, fingerprint: str, holder: str) -> None:
    """Let go of `holder`'s claim without an outcome (its call raised): the claim ends now, so
    another caller may take the request over at once; an `in_flight` row stays so, an outcome
    unknown that may have been paid (spend counts its estimate until it is settled)."""
    if _dialect(session) == "postgresql":
        ended: Any = func.now() - timedelta(seconds=1)
    else:
        ended = datetime.now(UTC) - timedelta(seconds=1)
    session.execute(
        update(TeacherCall)
        .where(TeacherCall.fingerprint == fingerprint, TeacherCall.claimed_by == holder)
        .values(claim_until=ended)
        .execution_options(synchronize_session=False)
    )


_OUTCOME = [
    f.name
    for f in fields(NewTeacherCall)
    if f.name
    not in (
        "fingerprint",
        "provider",
        "model",
        "mode",
        "stage_mode",
        "stage",
        "prompt_version",
        "options",
        "problem_id",
        "sample_index",
        "attempts",
    )
]


def _settle_statement() -> TextClause:
    """Write an outcome over the caller's own claim (and end the claim); attempts add up."""
    sets = ", ".join(f"{n} = :{n}" for n in _OUTCOME)
    sql = (
        f"UPDATE teacher_calls SET {sets}, attempts = attempts + :attempts, claimed_by = NULL, "
        "claim_until = NULL, updated_at = CURRENT_TIMESTAMP "
        "WHERE fingerprint = :fingerprint AND claimed_by = :holder AND status = 'in_flight' RETURNING id"
    )
    return text(sql).bindparams(*_typed("response", "cost_usd"))


_SETTLE = _settle_statement()


def settle_claimed(session: Session | Connection, call: NewTeacherCall, holder: str) -> int | None:
    """Write `call`'s outcome over `holder`'s `in_flight` claim on its request and end the claim;
    the row id, or None when the row is not that (the claim was lost, or kept a paid response)."""
    values = {n: getattr(call, n) for n in _OUTCOME}
    values.update(fingerprint=call.fingerprint, attempts=call.attempts, holder=holder)
    row_id = session.execute(_SETTLE, values).scalar()
    return None if row_id is None else int(row_id)


def settle_call(session: Session | Connection, call: NewTeacherCall, holder: str) -> tuple[int, bool]:
    """Record `call`'s outcome over `holder`'s claim on its request: (row id, whether this
    outcome was written).

    When the claim is no longer the holder's (it expired and was taken over, or the row was
    settled meanwhile), `record_call`'s rule applies instead; and a paid response that meets one
    already stored (the request was paid twice: only possible after a lost claim) adds its cost
    and attempts to the stored row, so the ledger still holds every dollar paid."""
    row_id = settle_claimed(session, call, holder)
    if row_id is not None:
        return row_id, True
    row_id, written = record_call(session, call)
    if not written and call.status in REPLAYABLE_STATUSES:
        extra: dict[str, Any] = {"attempts": TeacherCall.attempts + call.attempts}
        if call.cost_usd is not None:
            extra["cost_usd"] = func.coalesce(TeacherCall.cost_usd, 0) + call.cost_usd
        session.execute(
            update(TeacherCall)
            .where(TeacherCall.id == row_id, TeacherCall.status.in_(REPLAYABLE_STATUSES))
            .values(**extra)
            .execution_options(synchronize_session=False)
        )
    return row_id, written


def release_claim(session: Session | Connection, fingerprint: str, holder: str) -> None:
    """End `holder`'s claim on a row that keeps its outcome (a refresh that left the stored
    response in place)."""
    session.execute(
        update(TeacherCall)
        .where(TeacherCall.fingerprint == fingerprint, TeacherCall.claimed_by == holder)
        .values(claimed_by=None, claim_until=None)
        .execution_options(synchronize_session=False)
    )


__all__ = [
    "ClaimState",
    "abandon_claim",
    "claim_call",
    "claim_state",
    "release_claim",
    "renew_claims",
    "settle_call",
    "settle_claimed",
]
