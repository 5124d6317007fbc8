"""Queries on the operational side of jobs: deployment identity, chunk bookkeeping and leases,
job failures, and the rationales a job produced or reused. The caller owns the transaction.

Times: lease and queue times are compared with the database's clock on Postgres (`db_now`), so
hosts whose clocks disagree still agree on whether a lease is live; SQLite (one host) uses this
process's UTC clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import CursorResult, exists, func, insert, literal, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.models import (
    JOB_TERMINAL_STATUSES,
    Deployment,
    GenerationJob,
    JobChunk,
    JobFailure,
    JobProblem,
    JobRationale,
    Rationale,
)

# The key of the Postgres advisory lock that lets one reconciler sweep at a time ("kpddreco").
SWEEP_LOCK_KEY = 0x6B70_6464_7265_636F


def _rowcount(result: object) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _insert(session: Session) -> Any:
    """The dialect's INSERT with ON CONFLICT (Postgres or SQLite)."""
    return pg_insert if _is_postgres(session) else sqlite_insert


def db_now(session: Session) -> datetime:
    """Now, by the database's clock on Postgres (the transaction's start), else this host's, UTC."""
    if _is_postgres(session):
        moment = session.scalar(select(func.now()))
        assert isinstance(moment, datetime)
        return moment
    return datetime.now(UTC)


# --- deployment -------------------------------------------------------------------------------


def deployment_id(session: Session) -> str | None:
    """This database's deployment id (row 1 of `deployment`), or None when the row is missing."""
    return session.scalar(select(Deployment.deployment_id).where(Deployment.id == 1))


# --- chunks: queueing -------------------------------------------------------------------------


def add_job_chunks(session: Session, job_id: int, queued_at: datetime | None) -> int:
    """One `job_chunks` row per chunk of the job's problems (INSERT ... SELECT), queued at
    `queued_at` (None: the chunks run in-process and are never the reconciler's). Returns how many."""
    chunks = (
        select(literal(job_id), JobProblem.chunk, literal(queued_at, JobChunk.queued_at.type))
        .where(JobProblem.job_id == job_id)
        .group_by(JobProblem.chunk)
    )
    session.execute(insert(JobChunk).from_select(["job_id", "chunk", "queued_at"], chunks))
    return int(session.scalar(select(func.count()).where(JobChunk.job_id == job_id)) or 0)


def mark_queued(session: Session, job_id: int, chunks: Sequence[int], now: datetime) -> None:
    """The chunks are (about to be) sent to the broker now: clears any earlier enqueue error."""
    if not chunks:
        return
    stmt = _insert(session)(JobChunk).values(
        [{"job_id": job_id, "chunk": c, "queued_at": now, "deliveries": 0} for c in chunks]
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["job_id", "chunk"],
        set_={"queued_at": now, "enqueue_error": None, "updated_at": func.now()},
    )
    session.execute(stmt)


def mark_enqueue_failed(session: Session, job_id: int, chunks: Sequence[int], message: str) -> None:
    """Sending these chunks failed: the reconciler (or `kpdd resume`) sends them again."""
    if not chunks:
        return
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.chunk.in_(list(chunks)))
        .values(enqueue_error=message[:2000])
    )


# --- chunks: leases ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class LeaseHolder:
    worker: str | None
    lease_until: datetime | None


def take_lease(
    session: Session, job_id: int, chunk: int, worker: str, now: datetime, until: datetime
) -> LeaseHolder | None:
    """Count a delivery of the chunk and take its lease for `worker` until `until`, unless
    another worker holds a live one: then who holds it and until when (`worker` None: the job
    is gone). `worker` may take again a lease it holds (a retry of its own task)."""
    # INSERT ... SELECT from the job, so that a deleted job gets no row (and no FK error).
    this_job = select(GenerationJob.id, literal(chunk), literal(1)).where(GenerationJob.id == job_id)
    stmt = _insert(session)(JobChunk).from_select(["job_id", "chunk", "deliveries"], this_job)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["job_id", "chunk"],
            set_={"deliveries": JobChunk.deliveries + 1, "updated_at": func.now()},
        )
    )
    taken = session.execute(
        update(JobChunk)
        .where(
            JobChunk.job_id == job_id,
            JobChunk.chunk == chunk,
            or_(JobChunk.lease_until.is_(None), JobChunk.lease_until < now, JobChunk.worker == worker),
        )
        .values(worker=worker, lease_until=until)
    )
    if _rowcount(taken) == 1:
        return None
    row = session.execute(
        select(JobChunk.worker, JobChunk.lease_until).where(
            JobChunk.job_id == job_id, JobChunk.chunk == chunk
        )
    ).one_or_none()
    return LeaseHolder(None, None) if row is None else LeaseHolder(row.worker, row.lease_until)


def renew_lease(session: Session, job_id: int, chunk: int, worker: str, until: datetime) -> bool:
    """Extend `worker`'s lease; False when it no longer holds it (it expired and was taken)."""
    result = session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.chunk == chunk, JobChunk.worker == worker)
        .values(lease_until=until)
    )
    return _rowcount(result) == 1


def release_lease(session: Session, job_id: int, chunk: int, worker: str) -> None:
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.chunk == chunk, JobChunk.worker == worker)
        .values(worker=None, lease_until=None)
    )


def leased_chunks(session: Session, job_id: int, now: datetime) -> set[int]:
    """The job's chunks a worker holds now (a live lease)."""
    return set(
        session.scalars(select(JobChunk.chunk).where(JobChunk.job_id == job_id, JobChunk.lease_until >= now))
    )


def try_sweep_lock(session: Session, key: int = SWEEP_LOCK_KEY) -> bool:
    """Take the reconciler's lock (or the one named by `key`, e.g. the batch poller's) for this
    transaction; False when another sweep holds it. Only Postgres is shared between hosts:
    elsewhere the lock is always granted."""
    if not _is_postgres(session):
        return True
    return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}))


def stale_chunks(
    session: Session, now: datetime, queued_before: datetime, limit: int
) -> list[tuple[int, int, bool]]:
    """(job id, chunk, failed to send) of the chunks the reconciler may queue again: meant for
    the broker (queued at some point), of a job still queued or running, with a pending problem,
    no live lease, and either never sent (an enqueue error) or queued before `queued_before`."""
    pending = exists().where(
        JobProblem.job_id == JobChunk.job_id,
        JobProblem.chunk == JobChunk.chunk,
        JobProblem.state == "pending",
    )
    rows = session.execute(
        select(JobChunk.job_id, JobChunk.chunk, JobChunk.enqueue_error.is_not(None))
        .join(GenerationJob, GenerationJob.id == JobChunk.job_id)
        .where(
            GenerationJob.status.not_in(JOB_TERMINAL_STATUSES),
            JobChunk.queued_at.is_not(None),
            or_(JobChunk.enqueue_error.is_not(None), JobChunk.queued_at < queued_before),
            or_(JobChunk.lease_until.is_(None), JobChunk.lease_until < now),
            JobChunk.batch_wait.is_(False),  # waits for a provider batch: the batch poller's
            pending,
        )
        .order_by(JobChunk.job_id, JobChunk.chunk)
        .limit(limit)
    )
    return [(int(j), int(c), bool(e)) for j, c, e in rows]


# --- failures ---------------------------------------------------------------------------------


def add_job_failure(
    session: Session,
    job_id: int,
    kind: str,
    message: str,
    *,
    chunk: int | None = None,
    problem_id: int | None = None,
    worker: str | None = None,
    problems: int = 0,
    once: bool = False,
) -> bool:
    """Record a failure the job met. With `once`, nothing is written when the job already has a
    failure of this kind, worker and message (a refusal repeated on every delivery). Returns
    whether a row was written."""
    message = message[:2000]
    if once:
        seen = session.scalar(
            select(JobFailure.id)
            .where(
                JobFailure.job_id == job_id,
                JobFailure.kind == kind,
                JobFailure.message == message,
                JobFailure.worker.is_(None) if worker is None else JobFailure.worker == worker,
            )
            .limit(1)
        )
        if seen is not None:
            return False
    session.add(
        JobFailure(
            job_id=job_id,
            chunk=chunk,
            problem_id=problem_id,
            kind=kind,
            message=message,
            worker=worker,
            problems=problems,
        )
    )
    session.flush()
    return True


# --- the rationales of a job ------------------------------------------------------------------


def record_reused(
    session: Session,
    job_id: int,
    problem_ids: Sequence[int],
    provider: str,
    model: str,
    mode: str,
    prompt_version: str,
    below_index: int,
    options_key: str | None = None,
) -> None:
    """The stored, usable (not `failed`) rationales of these problems by this teacher, mode and
    prompt version, at sample indices below `below_index` (and made with `options_key`, unless it
    is None: any options), become the job's, with their verdict now: `reused` unless this job
    produced them itself (an earlier delivery of its chunk). A rationale the job already recorded
    keeps its record. One INSERT ... SELECT."""
    if not problem_ids:
        return
    same_options = () if options_key is None else (Rationale.options_key == options_key,)
    chosen = select(
        literal(job_id),
        Rationale.id,
        Rationale.job_id.is_distinct_from(job_id),
        Rationale.verdict,
    ).where(
        Rationale.problem_id.in_(list(problem_ids)),
        Rationale.provider == provider,
        Rationale.model == model,
        Rationale.mode == mode,
        Rationale.prompt_version == prompt_version,
        Rationale.sample_index < below_index,
        Rationale.verdict != "failed",
        *same_options,
    )
    stmt = _insert(session)(JobRationale).from_select(["job_id", "rationale_id", "reused", "verdict"], chosen)
    session.execute(stmt.on_conflict_do_nothing(index_elements=["job_id", "rationale_id"]))
