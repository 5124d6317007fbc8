"""Queries on what went wrong in generation jobs: `job_failures` rows, failed problems, the
attempt cap, and the closing rule of a job. The caller owns the transaction.

Kinds of failure that come from the system rather than from a teacher's answer (`SYSTEM_KINDS`)
are written by `services.generation.failures` (the `job_failures` rows through
`db.queries.operations.add_job_failure`); a teacher call's own failure kinds
(`server`, `auth`, `timeout`, ...) are written by the chunk itself. The distinction decides how a
job ends (`finish_if_done` in `db.queries.generation`): see `SYSTEM_KINDS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, and_, func, select, update
from sqlalchemy.orm import Session

from db.models import JOB_TERMINAL_STATUSES, GenerationJob, JobFailure, JobProblem

# Failures of the system, one kind each (at most 32 characters, the column):
# - job-wide: every chunk of the job would meet them on this worker, so they stop the job at once;
JOB_WIDE_KINDS = ("config", "bad_input", "budget")
# - per problem: an error that is not a teacher's (a bad value, a constraint, a bug), a sandbox
#   that failed (twice in a row, it stops the job), or a problem started
#   `KPDD_CHUNK_MAX_DELIVERIES` times without finishing;
PROBLEM_KINDS = ("sandbox", "bad_value", "integrity", "database", "unexpected", "attempt_cap")
SYSTEM_KINDS = JOB_WIDE_KINDS + PROBLEM_KINDS
# - transient (database or broker unreachable): never fail a problem; recorded when a chunk gives
#   up retrying, its problems left pending.
TRANSIENT_KINDS = ("database_unavailable", "broker_unavailable")
MAX_MESSAGE_CHARS = 2000


@dataclass(slots=True, frozen=True)
class FailureGroup:
    """The failures of one kind: how many were recorded, how many problems they touched, the
    workers they happened on, and the latest message."""

    kind: str
    events: int
    problems: int
    workers: list[str]
    message: str


def fail_pending(
    session: Session,
    job_id: int,
    kind: str,
    message: str,
    *,
    chunk: int | None = None,
    problem_ids: Sequence[int] | None = None,
) -> int:
    """Move the job's pending problems (of one chunk, or the ones given, or all) to `failed` with
    the kind and message. Returns how many moved; terminal problems keep their state."""
    where = [JobProblem.job_id == job_id, JobProblem.state == "pending"]
    if chunk is not None:
        where.append(JobProblem.chunk == chunk)
    if problem_ids is not None:
        where.append(JobProblem.problem_id.in_(problem_ids))
    result = session.execute(
        update(JobProblem)
        .where(*where)
        .values(state="failed", error_kind=kind, error_message=message[:MAX_MESSAGE_CHARS])
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def over_attempt_cap(session: Session, job_id: int, problem_ids: Sequence[int], cap: int) -> list[int]:
    """Those of `problem_ids` started more than `cap` times (`attempts`, counted at each start)."""
    if not problem_ids:
        return []
    return [
        int(p)
        for p in session.scalars(
            select(JobProblem.problem_id).where(
                JobProblem.job_id == job_id,
                JobProblem.problem_id.in_(problem_ids),
                JobProblem.attempts > cap,
            )
        )
    ]


def last_failure(session: Session, job_id: int, chunk: int) -> JobFailure | None:
    """The latest failure recorded for the chunk, if any."""
    return session.scalar(
        select(JobFailure)
        .where(JobFailure.job_id == job_id, JobFailure.chunk == chunk)
        .order_by(JobFailure.id.desc())
        .limit(1)
    )


def fail_job(session: Session, job_id: int, kind: str, message: str, reason: str) -> int | None:
    """End a job `failed` with `reason`: its pending problems fail with (kind, message). Returns
    how many problems that failed, or None when the job had already ended (it keeps its state)."""
    job = session.get(GenerationJob, job_id, with_for_update=True)
    if job is None or job.status in JOB_TERMINAL_STATUSES:
        return None
    failed = fail_pending(session, job_id, kind, message)
    job.status = "failed"
    job.stop_reason = reason[:MAX_MESSAGE_CHARS]
    job.finished_at = datetime.now(UTC)
    return failed


def system_failure_reason(session: Session | Connection, job_id: int, total: int) -> str | None:
    """Why a job whose work is over ends `failed`: its problems that failed for a system kind, by
    kind, with a message of the commonest kind. None when there are none."""
    rows = session.execute(
        select(JobProblem.error_kind, func.count())
        .where(
            JobProblem.job_id == job_id,
            JobProblem.state == "failed",
            JobProblem.error_kind.in_(SYSTEM_KINDS),
        )
        .group_by(JobProblem.error_kind)
    ).all()
    kinds = {str(kind): int(count) for kind, count in rows}
    if not kinds:
        return None
    failed = sum(kinds.values())
    by_kind = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    commonest = max(kinds, key=lambda k: (kinds[k], k))
    message = session.scalar(
        select(JobProblem.error_message)
        .where(JobProblem.job_id == job_id, JobProblem.state == "failed", JobProblem.error_kind == commonest)
        .limit(1)
    )
    return f"{failed} of {total} problems failed ({by_kind}); {commonest}: {message or '?'}"


def failure_groups(session: Session, job_id: int) -> list[FailureGroup]:
    """The job's recorded failures (`job_failures`) by kind, the commonest first."""
    rows = session.execute(
        select(
            JobFailure.kind,
            func.count(),
            func.coalesce(func.sum(JobFailure.problems), 0),
            func.max(JobFailure.id),
        )
        .where(JobFailure.job_id == job_id)
        .group_by(JobFailure.kind)
    ).all()
    groups = []
    for kind, events, problems, last_id in rows:
        last = session.get(JobFailure, last_id)
        workers = session.scalars(
            select(JobFailure.worker)
            .where(JobFailure.job_id == job_id, JobFailure.kind == kind, JobFailure.worker.is_not(None))
            .distinct()
            .limit(5)
        ).all()
        groups.append(
            FailureGroup(
                str(kind),
                int(events),
                int(problems),
                sorted(str(w) for w in workers),
                last.message if last else "",
            )
        )
    return sorted(groups, key=lambda g: (-g.events, g.kind))


def failed_problem_messages(session: Session, job_id: int) -> dict[str, tuple[int, str]]:
    """error kind -> (failed problems, one of their messages)."""
    rows = session.execute(
        select(JobProblem.error_kind, func.count(), func.max(JobProblem.error_message))
        .where(and_(JobProblem.job_id == job_id, JobProblem.state == "failed"))
        .group_by(JobProblem.error_kind)
    ).all()
    return {str(kind): (int(count), str(message or "")) for kind, count, message in rows}


__all__ = [
    "JOB_WIDE_KINDS",
    "MAX_MESSAGE_CHARS",
    "PROBLEM_KINDS",
    "SYSTEM_KINDS",
    "TRANSIENT_KINDS",
    "FailureGroup",
    "fail_job",
    "fail_pending",
    "failed_problem_messages",
    "failure_groups",
    "last_failure",
    "over_attempt_cap",
    "system_failure_reason",
]
