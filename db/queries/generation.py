"""Queries on generation jobs, their work items and rationales. The caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import CursorResult, Select, and_, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.models import GenerationJob, JobProblem, JobRationale, Problem, Rationale
from db.queries.failures import system_failure_reason


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
    session: Session, job_id: int, states: dict[int, tuple[str, str | None, str | None]]
) -> None:
    """Move pending problems to a state with an optional (error kind, message), one UPDATE per
    distinct outcome. Only pending rows move: a problem already terminal (a redelivered chunk
    finished it) keeps its state."""
    groups: dict[tuple[str, str | None, str | None], list[int]] = {}
    for problem_id, outcome in states.items():
        groups.setdefault(outcome, []).append(problem_id)
    for (state, kind, message), problem_ids in groups.items():
        session.execute(
            update(JobProblem)
            .where(
                JobProblem.job_id == job_id,
                JobProblem.problem_id.in_(problem_ids),
                JobProblem.state == "pending",
            )
            .values(state=state, error_kind=kind, error_message=message)
        )


def count_attempt(session: Session, job_id: int, problem_ids: Sequence[int]) -> None:
    session.execute(
        update(JobProblem)
        .where(JobProblem.job_id == job_id, JobProblem.problem_id.in_(problem_ids))
        .values(attempts=JobProblem.attempts + 1)
    )


def stop_pending(session: Session, job_id: int, state: str, reason: str) -> int:
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


def upsert_rationales(session: Session, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rationales; one that exists (same identity) is updated in place, keeping its id,
    its creation time and the job that first produced it. Idempotent under redelivery. Returns
    the rationales' ids, in the order of `rows`."""
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(Rationale).values(rows)
    updatable = [c for c in rows[0] if c not in (*_IDENTITY, "job_id")]
    upsert = stmt.on_conflict_do_update(
        index_elements=_IDENTITY,
        set_={c: getattr(stmt.excluded, c) for c in updatable} | {"updated_at": func.now()},
    ).returning(Rationale.id, *(getattr(Rationale, c) for c in _IDENTITY))
    # RETURNING does not promise the order of VALUES: match the ids back by identity.
    ids = {tuple(row[1:]): int(row[0]) for row in session.execute(upsert)}
    return [ids[tuple(row.get(c, "") if c == "options_key" else row[c] for c in _IDENTITY)] for row in rows]


def finish_if_done(session: Session, job_id: int) -> str | None:
    """Close the job when no problem is pending: its final status, or None while work remains.

    The rule: `budget_exhausted` when the budget stopped a problem; else `failed` when a problem
    failed for a reason of the system (`db.queries.failures.SYSTEM_KINDS`: a worker error, the
    attempt cap), with a reason naming the kinds; else `completed`. A teacher call that failed
    after its retries (`server`, `auth`, `timeout`, ...) fails its problem but not the job: such
    failures are data, counted by kind in `kpdd status`."""
    job = session.get(GenerationJob, job_id, with_for_update=True)
    if job is None or job.status in ("completed", "cancelled", "budget_exhausted", "failed"):
        return None if job is None else job.status
    pending = session.scalar(
        select(func.count()).where(and_(JobProblem.job_id == job_id, JobProblem.state == "pending"))
    )
    if pending:
        return None
    budget_hit = session.scalar(
        select(func.count()).where(JobProblem.job_id == job_id, JobProblem.state == "budget")
    )
    reason = None if budget_hit else system_failure_reason(session, job_id, job.total_problems)
    job.status = "budget_exhausted" if budget_hit else "failed" if reason else "completed"
    if reason:
        job.stop_reason = reason
    job.finished_at = datetime.now(UTC)
    return job.status
