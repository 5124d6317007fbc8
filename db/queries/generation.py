"""Queries on generation jobs, their work items and rationales. The caller owns the transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import orjson
from sqlalchemy import (
    Connection,
    CursorResult,
    Select,
    Table,
    TextClause,
    bindparam,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from db.models import GenerationJob, JobProblem, JobRationale, Problem, Rationale
from db.queries.failures import system_failure_reason

# Core tables, for statements that need no ORM object loaded or kept in step.
JOBS_TABLE = cast(Table, GenerationJob.__table__)
JOB_PROBLEMS_TABLE = cast(Table, JobProblem.__table__)


def _rowcount(result: object) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def problems_query(corpus_id: int, split: str | None, limit: int | None) -> Select[tuple[int]]:
    query = select(Problem.id).where(Problem.corpus_id == corpus_id)
    if split is not None:
        query = query.where(Problem.split == split)
    query = query.order_by(Problem.id)
    if limit is not None:
        query = query.limit(limit)
    return query


def add_job_problems(
    session: Session, job_id: int, corpus_id: int, split: str | None, limit: int | None, chunk_size: int
) -> int:
    """Insert one `pending` work item per selected problem, numbered into chunks in id order, in
    one INSERT ... SELECT (no rows pass through Python). Returns how many."""
    chosen = problems_query(corpus_id, split, limit).subquery()
    position = func.row_number().over(order_by=chosen.c.id) - 1
    numbered = select(literal(job_id).label("job_id"), chosen.c.id, (position // chunk_size).label("chunk"))
    session.execute(insert(JobProblem).from_select(["job_id", "problem_id", "chunk"], numbered))
    # rowcount of INSERT ... SELECT is not reported by every driver: count what is there.
    return int(session.scalar(select(func.count()).where(JobProblem.job_id == job_id)) or 0)


def pending_chunks(session: Session, job_id: int) -> list[int]:
    """Chunks that still hold a pending problem, in order."""
    return list(
        session.scalars(
            select(JobProblem.chunk)
            .where(JobProblem.job_id == job_id, JobProblem.state == "pending")
            .group_by(JobProblem.chunk)
            .order_by(JobProblem.chunk)
        )
    )


def chunk_problems(session: Session, job_id: int, chunk: int) -> list[tuple[int, str]]:
    """(problem id, state) of every problem in the chunk, in id order."""
    rows = session.execute(
        select(JobProblem.problem_id, JobProblem.state)
        .where(JobProblem.job_id == job_id, JobProblem.chunk == chunk)
        .order_by(JobProblem.problem_id)
    )
    return [(int(p), str(s)) for p, s in rows]


def set_problem_states(
    session: Session | Connection, job_id: int, states: dict[int, tuple[str, str | None, str | None]]
) -> None:
    """Move pending problems to a state with an optional (error kind, message), in one UPDATE
    for any number of problems and outcomes. Only pending rows move: a problem already terminal
    (a redelivered chunk finished it) keeps its state."""
    if not states:
        return
    rows = [
        {"problem_id": problem_id, "state": state, "error_kind": kind, "error_message": message}
        for problem_id, (state, kind, message) in states.items()
    ]
    dialect = _dialect(session)
    if dialect == "postgresql":
        params: Any = {"job_id": job_id, "rows": _json_rows(dialect, rows)}
    else:  # an executemany (no round trips on SQLite): a join would scan the job's pending rows
        params = [row | {"job_id": job_id} for row in rows]
    session.execute(_statement(dialect, "set_problem_states"), params)


_COUNT_ATTEMPT = (
    update(JOB_PROBLEMS_TABLE)  # this starts every chunk
    .where(
        JOB_PROBLEMS_TABLE.c.job_id == bindparam("of_job"),  # a column's name would add a SET
        JOB_PROBLEMS_TABLE.c.problem_id.in_(bindparam("problem_ids", expanding=True)),
    )
    .values(attempts=JOB_PROBLEMS_TABLE.c.attempts + 1)
)


def count_attempt(session: Session | Connection, job_id: int, problem_ids: Sequence[int]) -> None:
    session.execute(_COUNT_ATTEMPT, {"of_job": job_id, "problem_ids": list(problem_ids)})


def stop_pending(session: Session | Connection, job_id: int, state: str, reason: str) -> int:
    """Move every pending problem of the job to a terminal `state` (cancelled, budget)."""
    result = session.execute(
        update(JobProblem)
        .where(JobProblem.job_id == job_id, JobProblem.state == "pending")
        .values(state=state, error_kind=state, error_message=reason)
    )
    return _rowcount(result)


def state_counts(session: Session, job_id: int) -> dict[str, int]:
    rows = session.execute(
        select(JobProblem.state, func.count()).where(JobProblem.job_id == job_id).group_by(JobProblem.state)
    )
    return {str(s): int(c) for s, c in rows}


def failure_counts(session: Session, job_id: int) -> dict[str, int]:
    rows = session.execute(
        select(JobProblem.error_kind, func.count())
        .where(JobProblem.job_id == job_id, JobProblem.state == "failed")
        .group_by(JobProblem.error_kind)
    )
    return {str(k): int(c) for k, c in rows}


def rationale_counts(session: Session, job_id: int, *_scope: object) -> list[tuple[str, str, str, str, int]]:
    """(provider, model, mode, verdict, count) of the job's rationales: the ones it produced or
    reused, as recorded in `job_rationales` while it worked, with the verdict they had then. A
    later job on the same problems therefore changes nothing here. (Older callers pass the job's
    teachers, modes and stage mode; they are not needed any more and are ignored.)"""
    rows = session.execute(
        select(Rationale.provider, Rationale.model, Rationale.mode, JobRationale.verdict, func.count())
        .join(JobRationale, JobRationale.rationale_id == Rationale.id)
        .where(JobRationale.job_id == job_id)
        .group_by(Rationale.provider, Rationale.model, Rationale.mode, JobRationale.verdict)
        .order_by(Rationale.provider, Rationale.model, Rationale.mode, JobRationale.verdict)
    )
    return [(str(p), str(m), str(mo), str(v), int(c)) for p, m, mo, v, c in rows]


def verdict_confidence_counts(session: Session, job_id: int) -> list[tuple[str | None, int]]:
    """(confidence of the verdict, count) over the job's rationales (the scope of
    `rationale_counts`); None for rationales without a judged answer."""
    confidence = Rationale.verdict_details["confidence"].as_string()
    rows = session.execute(
        select(confidence, func.count())
        .join(JobRationale, JobRationale.rationale_id == Rationale.id)
        .where(JobRationale.job_id == job_id)
        .group_by(confidence)
    )
    return [(None if c is None else str(c), int(n)) for c, n in rows]


def rationale_failure_kinds(session: Session, job_id: int) -> dict[str, int]:
    rows = session.execute(
        select(Rationale.verdict_kind, func.count())
        .where(Rationale.job_id == job_id, Rationale.verdict.in_(("unparsed", "failed")))
        .group_by(Rationale.verdict_kind)
    )
    return {str(k): int(c) for k, c in rows}


def recent_rationales(session: Session, job_id: int, since: datetime) -> int:
    return int(
        session.scalar(select(func.count()).where(Rationale.job_id == job_id, Rationale.created_at >= since))
        or 0
    )


_VERDICT_RANK = {"valid": 0, "invalid": 1, "unparsed": 2, "failed": 3}


def existing_rationales(
    session: Session,
    problem_ids: Sequence[int],
    provider: str,
    model: str,
    mode: str,
    prompt_version: str,
    *,
    options_key: str | None = None,
    reuse_any_options: bool = False,
    produced_by_job: int | None = None,
) -> dict[int, dict[int, str]]:
    """problem id -> {sample index -> verdict} of the rationales already stored (any job).

    With `options_key`, only rationales made with those generation options count, unless
    `reuse_any_options` (then any options, legacy '' rows included; for an index stored under
    several options the job's own wins, else the best verdict). With `produced_by_job`, only
    the rationales that job produced itself (`job_rationales`, not reused): a `--refresh` job
    makes everything stored before it again, but not what it already made (a redelivery)."""
    query = select(
        Rationale.problem_id, Rationale.sample_index, Rationale.verdict, Rationale.options_key
    ).where(
        Rationale.problem_id.in_(problem_ids),
        Rationale.provider == provider,
        Rationale.model == model,
        Rationale.mode == mode,
        Rationale.prompt_version == prompt_version,
    )
    if options_key is not None and not reuse_any_options:
        query = query.where(Rationale.options_key == options_key)
    if produced_by_job is not None:
        query = query.where(
            select(JobRationale.rationale_id)
            .where(
                JobRationale.job_id == produced_by_job,
                JobRationale.rationale_id == Rationale.id,
                JobRationale.reused.is_(False),
            )
            .exists()
        )
    best: dict[tuple[int, int], tuple[int, int, str]] = {}
    for problem_id, sample_index, verdict, key in session.execute(query):
        rank = (0 if key == options_key else 1, _VERDICT_RANK.get(str(verdict), 4))
        slot = (int(problem_id), int(sample_index))
        if slot not in best or rank < best[slot][:2]:
            best[slot] = (*rank, str(verdict))
    out: dict[int, dict[int, str]] = {}
    for (problem_id, sample_index), (_own, _rank, verdict) in best.items():
        out.setdefault(problem_id, {})[sample_index] = verdict
    return out


_IDENTITY = ["problem_id", "provider", "model", "mode", "prompt_version", "sample_index", "options_key"]
# The columns a rationale is written with, and their Postgres types in the row set. `json`: a
# JSON column, sent as its JSON text (None as JSON null, as SQLAlchemy's JSON type stores it).
_RATIONALE_COLUMNS = {
    "problem_id": "bigint",
    "job_id": "bigint",
    "provider": "text",
    "model": "text",
    "mode": "text",
    "stage_mode": "text",
    "prompt_version": "text",
    "sample_index": "integer",
    "options_key": "text",
    "core_question": "text",
    "solving_info": "json",
    "solution_text": "text",
    "final_answer_text": "text",
    "program": "text",
    "answer": "text",
    "verdict": "text",
    "verdict_kind": "text",
    "judged_by": "text",
    "verdict_details": "json",
    "call_ids": "json",
    "cost_usd": "numeric",
    "tokens_in": "integer",
    "tokens_out": "integer",
}
_JSON_COLUMNS = [c for c, kind in _RATIONALE_COLUMNS.items() if kind == "json"]
_statements: dict[tuple[str, str], TextClause] = {}


def _rowset(dialect: str, columns: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The FROM clause over the JSON array of row objects bound as `:rows`, and the SQL of each
    column read from it: `jsonb_to_recordset` on Postgres, `json_each` on SQLite."""
    if dialect == "postgresql":
        declared = ", ".join(f"{c} {'text' if kind == 'json' else kind}" for c, kind in columns.items())
        source = f"jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({declared})"
        return source, {
            c: f"CAST(r.{c} AS jsonb)" if kind == "json" else f"r.{c}" for c, kind in columns.items()
        }
    return "json_each(:rows) AS r", {c: f"json_extract(r.value, '$.{c}')" for c in columns}


def _statement(dialect: str, name: str) -> TextClause:
    """The statement `name` for `dialect`, built once per process: one text statement whose SQL
    does not depend on how many rows it writes (all of them travel in one JSON parameter), so
    SQLAlchemy compiles it once and psycopg prepares it."""
    key = (dialect, name)
    statement = _statements.get(key)
    if statement is None:
        statement = _statements[key] = text(_SQL[name](dialect))
    return statement


def _upsert_rationales_sql(dialect: str) -> str:
    source, read = _rowset(dialect, _RATIONALE_COLUMNS)
    names = list(_RATIONALE_COLUMNS)
    updates = [f"{c} = excluded.{c}" for c in names if c not in (*_IDENTITY, "job_id")]
    # SQLite needs a WHERE to tell the upsert's ON CONFLICT from a join constraint.
    return (
        f"INSERT INTO rationales ({', '.join(names)}) SELECT {', '.join(read[c] for c in names)} "
        f"FROM {source} WHERE true ON CONFLICT ({', '.join(_IDENTITY)}) DO UPDATE SET "
        f"{', '.join(updates)}, updated_at = CURRENT_TIMESTAMP RETURNING id, {', '.join(_IDENTITY)}"
    )


def _record_produced_sql(dialect: str) -> str:
    source, read = _rowset(dialect, {"rationale_id": "bigint", "verdict": "text"})
    return (
        "INSERT INTO job_rationales (job_id, rationale_id, reused, verdict) "
        f"SELECT :job_id, {read['rationale_id']}, false, {read['verdict']} FROM {source} WHERE true "
        "ON CONFLICT (job_id, rationale_id) DO UPDATE SET reused = false, verdict = excluded.verdict"
    )


def _set_problem_states_sql(dialect: str) -> str:
    if dialect != "postgresql":
        return (
            "UPDATE job_problems SET state = :state, error_kind = :error_kind, error_message = "
            ":error_message WHERE job_id = :job_id AND problem_id = :problem_id AND state = 'pending'"
        )
    columns = {"problem_id": "bigint", "state": "text", "error_kind": "text", "error_message": "text"}
    source, read = _rowset(dialect, columns)
    return (
        f"UPDATE job_problems SET state = {read['state']}, error_kind = {read['error_kind']}, "
        f"error_message = {read['error_message']} FROM {source} WHERE job_problems.job_id = :job_id "
        f"AND job_problems.problem_id = {read['problem_id']} AND job_problems.state = 'pending'"
    )


_SQL = {
    "upsert_rationales": _upsert_rationales_sql,
    "record_produced": _record_produced_sql,
    "set_problem_states": _set_problem_states_sql,
}


def _json_rows(dialect: str, rows: list[dict[str, Any]]) -> str:
    """`rows` as one JSON array: money as text on Postgres (exact) and as a float on SQLite (as
    SQLAlchemy's Numeric binds it there)."""
    money: Any = str if dialect == "postgresql" else float

    def default(value: object) -> object:
        if isinstance(value, Decimal):
            return money(value)
        raise TypeError(f"not JSON: {type(value).__name__}")

    return orjson.dumps(rows, default=default).decode()


def _dialect(session: Session | Connection) -> str:
    bind = session.get_bind() if isinstance(session, Session) else session
    return bind.dialect.name


def upsert_rationales(session: Session | Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rationales; one that exists (same identity) is updated in place, keeping its id,
    its creation time and the job that first produced it. Idempotent under redelivery. Returns
    the rationales' ids, in the order of `rows`. One statement for any number of rows; a row
    names the columns of `_RATIONALE_COLUMNS` (one it lacks is NULL; `options_key` '')."""
    if not rows:
        return []
    dialect = _dialect(session)
    sent = []
    for row in rows:
        values = {c: row.get(c) for c in _RATIONALE_COLUMNS}
        values["options_key"] = row.get("options_key", "")
        for column in _JSON_COLUMNS:
            values[column] = json.dumps(values[column])
        sent.append(values)
    result = session.execute(_statement(dialect, "upsert_rationales"), {"rows": _json_rows(dialect, sent)})
    # RETURNING does not promise the order of the rows: match the ids back by identity.
    ids = {tuple(row[1:]): int(row[0]) for row in result}
    return [ids[tuple(row[c] for c in _IDENTITY)] for row in sent]


def record_produced(
    session: Session | Connection, job_id: int, rationale_ids: Sequence[int], verdicts: Sequence[str]
) -> None:
    """The job produced (or asked again) these rationales, with these verdicts: recorded as its
    own (`reused` false), replacing an earlier record of the same rationale by the same job. One
    statement for any number of rows (see `upsert_rationales`)."""
    if not rationale_ids:
        return
    # One row per rationale in a statement (Postgres refuses to update a row twice in one).
    latest = dict(zip(rationale_ids, verdicts, strict=True))
    rows = [{"rationale_id": rid, "verdict": verdict} for rid, verdict in latest.items()]
    dialect = _dialect(session)
    session.execute(
        _statement(dialect, "record_produced"), {"job_id": job_id, "rows": _json_rows(dialect, rows)}
    )


# The job row, locked until the transaction ends: chunks that end at the same time close the
# job one after the other, so the last one sees every other's problems terminal.
_LOCK_JOB = (
    select(GenerationJob.status, GenerationJob.total_problems)
    .where(GenerationJob.id == bindparam("job_id"))
    .with_for_update()
)
_ANY_IN_STATE = (
    select(JobProblem.problem_id)
    .where(JobProblem.job_id == bindparam("job_id"), JobProblem.state == bindparam("state"))
    .limit(1)
)
_CLOSE_JOB = (
    update(JOBS_TABLE)
    .where(JOBS_TABLE.c.id == bindparam("job_id"))
    .values(status=bindparam("status"), finished_at=bindparam("finished_at"))
)


def finish_if_done(session: Session | Connection, job_id: int) -> str | None:
    """Close the job when no problem is pending: its final status, or None while work remains.

    The rule: `budget_exhausted` when the budget stopped a problem; else `failed` when a problem
    failed for a reason of the system (`db.queries.failures.SYSTEM_KINDS`: a worker error, the
    attempt cap), with a reason naming the kinds; else `completed`. A teacher call that failed
    after its retries (`server`, `auth`, `timeout`, ...) fails its problem but not the job: such
    failures are data, counted by kind in `kpdd status`."""
    job = session.execute(_LOCK_JOB, {"job_id": job_id}).first()
    if job is None or job.status in ("completed", "cancelled", "budget_exhausted", "failed"):
        return None if job is None else str(job.status)
    if session.execute(_ANY_IN_STATE, {"job_id": job_id, "state": "pending"}).first() is not None:
        return None
    budget_hit = session.execute(_ANY_IN_STATE, {"job_id": job_id, "state": "budget"}).first() is not None
    reason = None if budget_hit else system_failure_reason(session, job_id, job.total_problems)
    status = "budget_exhausted" if budget_hit else "failed" if reason else "completed"
    close = _CLOSE_JOB.values(stop_reason=reason) if reason else _CLOSE_JOB
    session.execute(close, {"job_id": job_id, "status": status, "finished_at": datetime.now(UTC)})
    return status
