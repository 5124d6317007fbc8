"""Queries on provider batches and their requests (`db.models.batches`). The caller owns the
transaction. On Postgres, requests and batches are taken with `FOR UPDATE SKIP LOCKED`, and the
batch poller's whole cycle is serialised by an advisory lock (`BATCH_LOCK_KEY`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, TextClause, bindparam, exists, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import (
    JOB_TERMINAL_STATUSES,
    REQUEST_OPEN_STATES,
    BatchRequest,
    GenerationJob,
    JobChunk,
    JobProblem,
    ProviderBatch,
)

BATCH_LOCK_KEY = 0x6B70_6464_6261_7463  # "kpddbatc"


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


@dataclass(slots=True, frozen=True)
class RequestState:
    state: str
    call_id: int | None
    error_kind: str | None
    error_message: str | None


def _queue_statement() -> TextClause:
    """Queue a request, or find the one the job has: one parameterised statement, compiled once
    (SQLAlchemy does not cache the compiled form of an `INSERT ... ON CONFLICT` construct). The
    no-op update makes RETURNING give the stored row's state when the request was there."""
    names = ["job_id", "chunk", "problem_id", "teacher", "fingerprint", "body", "intent", "estimate_usd"]
    sql = (
        f"INSERT INTO batch_requests ({', '.join(names)}, state, submissions) "
        f"VALUES ({', '.join(':' + n for n in names)}, 'queued', 0) "
        "ON CONFLICT (job_id, fingerprint) DO UPDATE SET submissions = batch_requests.submissions "
        "RETURNING state, call_id, error_kind, error_message"
    )
    columns = BatchRequest.__table__.c
    return text(sql).bindparams(
        *(bindparam(n, type_=columns[n].type) for n in ("body", "intent", "estimate_usd"))
    )


_QUEUE = _queue_statement()


def queue_request(conn: Session | Connection, values: dict[str, Any]) -> RequestState:
    """Queue one request for a batch unless the job already has it; its state either way."""
    row = conn.execute(_QUEUE, values).one()
    return RequestState(*row)


def mark_chunk_waiting(session: Session, job_id: int, chunk: int, problem_ids: Sequence[int]) -> None:
    """The chunk waits for a batch: the batch poller queues it again once its requests are
    answered. The run that ended waiting does not count as an attempt of its problems (the
    attempt cap is for runs that crash)."""
    dialect = postgresql if _postgres(session) else sqlite
    session.execute(
        dialect.insert(JobChunk)
        .values(job_id=job_id, chunk=chunk, batch_wait=True)
        .on_conflict_do_update(index_elements=["job_id", "chunk"], set_={"batch_wait": True})
    )
    session.execute(
        update(JobProblem)
        .where(JobProblem.job_id == job_id, JobProblem.problem_id.in_(problem_ids), JobProblem.attempts > 0)
        .values(attempts=JobProblem.attempts - 1)
        .execution_options(synchronize_session=False)
    )


def live_job(session: Session) -> Any:
    return GenerationJob.status.not_in(JOB_TERMINAL_STATUSES)


@dataclass(slots=True, frozen=True)
class QueuedGroup:
    job_id: int
    teacher: str
    requests: int
    newest: datetime


def queued_groups(session: Session) -> list[QueuedGroup]:
    """(job, teacher) groups of queued requests of live jobs, oldest first."""
    rows = session.execute(
        select(BatchRequest.job_id, BatchRequest.teacher, func.count(), func.max(BatchRequest.created_at))
        .join(GenerationJob, GenerationJob.id == BatchRequest.job_id)
        .where(BatchRequest.state == "queued", live_job(session))
        .group_by(BatchRequest.job_id, BatchRequest.teacher)
        .order_by(func.min(BatchRequest.id))
    ).all()
    return [QueuedGroup(int(j), str(t), int(n), newest) for j, t, n, newest in rows]


def take_queued(session: Session, job_id: int, teacher: str, limit: int) -> list[BatchRequest]:
    query = (
        select(BatchRequest)
        .where(BatchRequest.job_id == job_id, BatchRequest.teacher == teacher, BatchRequest.state == "queued")
        .order_by(BatchRequest.id)
        .limit(limit)
    )
    if _postgres(session):
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query))


def requests_of(session: Session, batch_id: int) -> list[BatchRequest]:
    return list(
        session.scalars(
            select(BatchRequest).where(BatchRequest.batch_id == batch_id).order_by(BatchRequest.id)
        )
    )


def batches_in(session: Session, states: Sequence[str], limit: int = 100) -> list[ProviderBatch]:
    query = (
        select(ProviderBatch).where(ProviderBatch.state.in_(states)).order_by(ProviderBatch.id).limit(limit)
    )
    if _postgres(session):
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query))


def job_status_of(session: Session, job_id: int) -> str | None:
    return session.scalar(select(GenerationJob.status).where(GenerationJob.id == job_id))


def close_requests_of_ended_jobs(session: Session) -> int:
    """Queued requests of jobs that ended (cancelled, failed, completed) will never be sent."""
    ended = select(GenerationJob.id).where(GenerationJob.status.in_(JOB_TERMINAL_STATUSES))
    result = session.execute(
        update(BatchRequest)
        .where(BatchRequest.state == "queued", BatchRequest.job_id.in_(ended))
        .values(
            state="failed", error_kind="stopped", error_message="the job ended before the request was sent"
        )
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def chunks_to_requeue(session: Session, now: datetime, limit: int = 1000) -> list[tuple[int, int]]:
    """(job, chunk) of chunks waiting for a batch whose requests are all answered, of live jobs,
    that no worker holds now."""
    open_requests = exists().where(
        BatchRequest.job_id == JobChunk.job_id,
        BatchRequest.chunk == JobChunk.chunk,
        BatchRequest.state.in_(REQUEST_OPEN_STATES),
    )
    rows = session.execute(
        select(JobChunk.job_id, JobChunk.chunk)
        .join(GenerationJob, GenerationJob.id == JobChunk.job_id)
        .where(
            JobChunk.batch_wait.is_(True),
            live_job(session),
            or_(JobChunk.lease_until.is_(None), JobChunk.lease_until < now),
            ~open_requests,
            exists().where(
                JobProblem.job_id == JobChunk.job_id,
                JobProblem.chunk == JobChunk.chunk,
                JobProblem.state == "pending",
            ),
        )
        .order_by(JobChunk.job_id, JobChunk.chunk)
        .limit(limit)
    ).all()
    return [(int(j), int(c)) for j, c in rows]


def set_chunks_waiting(session: Session, chunks: Sequence[tuple[int, int]], waiting: bool) -> None:
    for job_id, chunk in chunks:
        session.execute(
            update(JobChunk)
            .where(JobChunk.job_id == job_id, JobChunk.chunk == chunk)
            .values(batch_wait=waiting)
            .execution_options(synchronize_session=False)
        )


@dataclass(slots=True, frozen=True)
class BatchFigures:
    """A job's batches for `kpdd status`: batches by state (submitting, in_progress, completed,
    expired: ended with some requests expired, cancelled, failed), its batch requests (answered
    of all, still queued), chunks waiting, what the batches cost and what the same answers would
    have cost online."""

    by_state: dict[str, int]
    requests: int
    answered: int
    queued: int
    waiting_chunks: int
    cost_usd: Decimal
    online_cost_usd: Decimal

    @property
    def saved_usd(self) -> Decimal:
        return self.online_cost_usd - self.cost_usd


def batch_figures(session: Session, job_id: int) -> BatchFigures | None:
    """None when the job never used a batch."""
    states: dict[str, int] = {}
    for state, expired in session.execute(
        select(ProviderBatch.state, ProviderBatch.expired).where(ProviderBatch.job_id == job_id)
    ).all():
        shown = {"ended": "expired" if expired else "completed"}.get(state, state)
        states[shown] = states.get(shown, 0) + 1
    request_states: dict[str, int] = dict(
        session.execute(  # type: ignore[arg-type]
            select(BatchRequest.state, func.count())
            .where(BatchRequest.job_id == job_id)
            .group_by(BatchRequest.state)
        ).all()
    )
    if not states and not request_states:
        return None
    cost, online = session.execute(
        select(
            func.coalesce(func.sum(ProviderBatch.cost_usd), 0),
            func.coalesce(func.sum(ProviderBatch.online_cost_usd), 0),
        ).where(ProviderBatch.job_id == job_id)
    ).one()
    waiting = session.scalar(
        select(func.count()).where(JobChunk.job_id == job_id, JobChunk.batch_wait.is_(True))
    )
    return BatchFigures(
        by_state=states,
        requests=sum(int(v) for v in request_states.values()),
        answered=int(request_states.get("done", 0)),
        queued=int(request_states.get("queued", 0)),
        waiting_chunks=int(waiting or 0),
        cost_usd=Decimal(str(cost)),
        online_cost_usd=Decimal(str(online)),
    )


def open_requests(session: Session, job_id: int) -> int:
    return int(
        session.scalar(
            select(func.count()).where(
                BatchRequest.job_id == job_id, BatchRequest.state.in_(REQUEST_OPEN_STATES)
            )
        )
        or 0
    )


def waiting_chunks(session: Session, job_id: int) -> list[int]:
    return [
        int(c)
        for c in session.scalars(
            select(JobChunk.chunk)
            .where(JobChunk.job_id == job_id, JobChunk.batch_wait.is_(True))
            .order_by(JobChunk.chunk)
        )
    ]


__all__ = [
    "BATCH_LOCK_KEY",
    "BatchFigures",
    "QueuedGroup",
    "RequestState",
    "batch_figures",
    "batches_in",
    "chunks_to_requeue",
    "close_requests_of_ended_jobs",
    "job_status_of",
    "mark_chunk_waiting",
    "open_requests",
    "queue_request",
    "queued_groups",
    "requests_of",
    "set_chunks_waiting",
    "take_queued",
    "waiting_chunks",
]
