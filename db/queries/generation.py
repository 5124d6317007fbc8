"""Queries on generation jobs, their work items and rationales. The caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import CursorResult, Select, and_, func, insert, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.models import GenerationJob, JobProblem, Problem, Rationale


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


def rationale_counts(
    session: Session, job_id: int, teachers: Sequence[tuple[str, str]], modes: Sequence[str], stage_mode: str
) -> list[tuple[str, str, str, str, int]]:
    """(provider, model, mode, verdict, count) of the rationales in the job's scope: its problems,
    by its teachers, in its modes and stage mode, whichever job produced them (a re-run finds
    its rationales already stored and still has them)."""
    teacher_match = or_(*(and_(Rationale.provider == p, Rationale.model == m) for p, m in teachers))
    rows = session.execute(
        select(Rationale.provider, Rationale.model, Rationale.mode, Rationale.verdict, func.count())
        .join(JobProblem, and_(JobProblem.problem_id == Rationale.problem_id, JobProblem.job_id == job_id))
        .where(teacher_match, Rationale.mode.in_(modes), Rationale.stage_mode == stage_mode)
        .group_by(Rationale.provider, Rationale.model, Rationale.mode, Rationale.verdict)
        .order_by(Rationale.provider, Rationale.model, Rationale.mode, Rationale.verdict)
    )
    return [(str(p), str(m), str(mo), str(v), int(c)) for p, m, mo, v, c in rows]


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


def existing_rationales(
    session: Session, problem_ids: Sequence[int], provider: str, model: str, mode: str, prompt_version: str
) -> dict[int, dict[int, str]]:
    """problem id -> {sample index -> verdict} of the rationales already stored (any job)."""
    rows = session.execute(
        select(Rationale.problem_id, Rationale.sample_index, Rationale.verdict).where(
            Rationale.problem_id.in_(problem_ids),
            Rationale.provider == provider,
            Rationale.model == model,
            Rationale.mode == mode,
            Rationale.prompt_version == prompt_version,
        )
    )
    out: dict[int, dict[int, str]] = {}
    for problem_id, sample_index, verdict in rows:
        out.setdefault(int(problem_id), {})[int(sample_index)] = str(verdict)
    return out


_IDENTITY = ["problem_id", "provider", "model", "mode", "prompt_version", "sample_index", "options_key"]


def upsert_rationales(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert rationales; one that exists (same identity) is updated in place, keeping its id,
    its creation time and the job that first produced it. Idempotent under redelivery."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(Rationale).values(rows)
    updatable = [c for c in rows[0] if c not in (*_IDENTITY, "job_id")]
    stmt = stmt.on_conflict_do_update(
        index_elements=_IDENTITY,
        set_={c: getattr(stmt.excluded, c) for c in updatable} | {"updated_at": func.now()},
    )
    session.execute(stmt)


def reserve_budget(session: Session, job_id: int, amount: Decimal) -> bool:
    """Atomically hold `amount` dollars of the job's budget; False when it would go over."""
    result = session.execute(
        update(GenerationJob)
        .where(
            GenerationJob.id == job_id,
            GenerationJob.spent_usd + GenerationJob.reserved_usd + amount <= GenerationJob.budget_usd,
        )
        .values(reserved_usd=GenerationJob.reserved_usd + amount)
    )
    return _rowcount(result) == 1


def settle_budget(session: Session, job_id: int, reserved: Decimal, actual: Decimal) -> None:
    session.execute(
        update(GenerationJob)
        .where(GenerationJob.id == job_id)
        .values(
            reserved_usd=func.greatest(GenerationJob.reserved_usd - reserved, 0)
            if session.get_bind().dialect.name == "postgresql"
            else func.max(GenerationJob.reserved_usd - reserved, 0),
            spent_usd=GenerationJob.spent_usd + actual,
        )
    )


def finish_if_done(session: Session, job_id: int) -> str | None:
    """Close the job when no problem is pending: its final status, or None while work remains."""
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
    job.status = "budget_exhausted" if budget_hit else "completed"
    job.finished_at = datetime.now(UTC)
    return job.status
