"""Every chunk ends, with its reason: errors classified, recorded, retried or given up on.

**Classification** (`classify`), before anything is retried:

- transient: the database or the broker is unreachable (SQLAlchemy `OperationalError`,
  `InterfaceError`, an invalidated connection, a pool timeout, psycopg's own connection errors,
  Redis and kombu connection errors, refused or reset sockets). The task retries the chunk, its
  waits capped well below the visibility timeout (`RetrySchedule`), for
  `KPDD_CHUNK_RETRY_WINDOW_S`; then it gives up: logged at ERROR, recorded on the job when the
  database can take it, the chunk's problems left `pending` for `kpdd resume` and the reconciler.
  Nothing is marked failed for an outage.
- job-wide (`JOB_WIDE_KINDS`): `config` (the worker lacks a provider key the teacher needs),
  `bad_input` (a stored teacher spec this worker cannot read), `budget` (a budgeted teacher
  without a price on this worker). Every chunk would meet them again, so the job ends `failed`
  at once, its pending problems failed with the reason.
- per problem (`PROBLEM_KINDS`): `bad_value` (DataError, ValueError: a value the database or
  the code refuses), `integrity`, `database` (ProgrammingError and other database errors that a
  retry cannot fix), `unexpected` (anything else: a bug), `sandbox` (the sandbox failed). The
  chunk's pending problems are run again one by one (teacher calls replay from the cache, free)
  to find the ones that fail; only those fail, each with its own row in `job_failures`. A
  sandbox that fails again on that second run (a fresh one is started) cannot start on this
  worker: that stops the job like a job-wide failure.

A permanent error is never retried and never pays a teacher twice.

**Attempt cap**: each start of a problem counts in `job_problems.attempts`; a problem started
more than `KPDD_CHUNK_MAX_DELIVERIES` times (default 5) without finishing (its worker killed
every time, say) fails with kind `attempt_cap` and its chunk's last recorded failure.

**Stops**: before each teacher call (`guarded`, through `services.teachers.rationale.CALL_GUARD`)
the job's status is consulted (read at most every `STOP_CHECK_EVERY_S`, 0.25 s, per chunk);
once it has ended (cancelled, failed, out of budget) no call is made.
Before rationale rows are written (`may_write`) the job row is read under a share lock, so a
cancel that has committed stops every later write, and a write in progress holds the cancel
until it commits. Calls in flight when the job is cancelled (or started within
`STOP_CHECK_EVERY_S` of it) are paid for and recorded in the ledger (a later job replays them
for free); their rationales are not written.

Every recorded message is NUL-escaped (`db.nul`) and cut to 2,000 characters: recording a
failure cannot fail for the value it records.
"""

from __future__ import annotations

import errno
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, bindparam, select, update
from sqlalchemy.orm import Session

from db.models import JOB_TERMINAL_STATUSES, GenerationJob
from db.nul import escape_nul
from db.queries.failures import (
    JOB_WIDE_KINDS,
    MAX_MESSAGE_CHARS,
    fail_job,
    fail_pending,
    last_failure,
    over_attempt_cap,
)
from db.queries.generation import (
    JOBS_TABLE,
    chunk_problems,
    finish_if_done,
    set_problem_states,
    stop_pending,
)
from db.queries.operations import add_job_failure
from services.config import get_settings
from services.errors import BadInputError, ConfigError
from services.generation.chunks import worker_id
from services.teachers.rationale import CALL_GUARD, STOPPED, CallFailure, RationaleOutcome

if TYPE_CHECKING:
    from services.generation.execute import ChunkReport, Generator

log = logging.getLogger(__name__)

R = TypeVar("R")
# How stale the job status consulted before a teacher call may be (`guarded`): a status read per
# call cost about 2.5 CPU-ms per rationale in benchmarks/bench_generation.py (zero latency), as
# much as the rest of the worker's database work; a call may now start up to this long after a
# cancel, and is then recorded like one in flight.
STOP_CHECK_EVERY_S = 0.25
_CONNECTION_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
}


@dataclass(slots=True, frozen=True)
class Failure:
    """A classified error: `kind` (see the module doc), a one-line `message`, and whether it may
    pass (`transient`) or stops the whole job (`job_wide`)."""

    kind: str
    message: str
    transient: bool = False
    stops_job: bool = False  # a per-problem kind that recurred where it should not (the sandbox)

    @property
    def job_wide(self) -> bool:
        return self.kind in JOB_WIDE_KINDS or self.stops_job


def classify(exc: BaseException) -> Failure:
    """The failure `exc` stands for (the module doc lists the kinds). An exception raised from
    a transient one (`raise X from OperationalError`) is transient too."""
    transient = _transient_kind(exc)
    if transient is not None:
        return Failure(transient, _describe(exc), transient=True)
    from sqlalchemy import exc as sa

    from services.generation.budget import BudgetExhausted
    from services.validation.sandbox import SandboxError

    kinds: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str]] = [
        (ConfigError, "config"),
        (BadInputError, "bad_input"),
        (BudgetExhausted, "budget"),
        (SandboxError, "sandbox"),
        (sa.IntegrityError, "integrity"),
        ((sa.DataError, ValueError, UnicodeError), "bad_value"),
        ((sa.DBAPIError, sa.SQLAlchemyError), "database"),
    ]
    for types, kind in kinds:
        if isinstance(exc, types):
            return Failure(kind, _describe(exc))
    return Failure("unexpected", _describe(exc))


def _transient_kind(exc: BaseException) -> str | None:
    import psycopg
    from kombu import exceptions as kombu
    from redis import exceptions as redis
    from sqlalchemy import exc as sa

    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, sa.DBAPIError) and seen.connection_invalidated:
            return "database_unavailable"
        if isinstance(seen, (sa.OperationalError, sa.InterfaceError, sa.TimeoutError, sa.DisconnectionError)):
            # SQLite says "no such table" with an OperationalError: a schema problem, not an outage.
            if "no such table" in str(seen) or "no such column" in str(seen):
                return None
            return "database_unavailable"
        if isinstance(seen, (psycopg.OperationalError, psycopg.InterfaceError)):
            return "database_unavailable"
        if isinstance(seen, (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)):
            return "broker_unavailable"
        if isinstance(seen, (kombu.OperationalError, kombu.ConnectionError)):
            return "broker_unavailable"
        if isinstance(seen, ConnectionError) or (
            isinstance(seen, OSError) and seen.errno in _CONNECTION_ERRNOS
        ):
            return "database_unavailable"
        seen = seen.__cause__  # `raise X from Y` only: an error met while handling one is its own
    return None


def _describe(exc: BaseException) -> str:
    """`Type: first line of the message` (a database error's own message, not its SQL)."""
    inner = getattr(exc, "orig", None) or exc
    lines = str(inner).strip().splitlines()
    first = lines[0] if lines else ""
    return safe_message(f"{type(inner).__name__}: {first}" if first else type(inner).__name__)


def safe_message(message: str) -> str:
    """A message any text column takes: NUL escaped, at most `MAX_MESSAGE_CHARS` characters."""
    return (escape_nul(message) or "")[:MAX_MESSAGE_CHARS]


# --- running a chunk ---------------------------------------------------------------------------


def run_chunk(generator: Generator, job_id: int, chunk: int) -> ChunkReport:
    """`generator.process_chunk`, with its permanent failures recorded (module doc): job-wide
    ones end the job; others send the chunk's pending problems through one at a time, failing
    only those that raise. Transient errors propagate, for the caller to retry."""
    try:
        return generator.process_chunk(job_id, chunk)
    except Exception as exc:
        failure = classify(exc)
        if failure.transient:
            raise
        log.warning("job %s chunk %s: %s: %s", job_id, chunk, failure.kind, failure.message, exc_info=exc)
    report = _report(job_id, chunk)
    pending = [] if failure.job_wide else _pending(generator.engine, job_id, chunk)
    if not pending or (len(pending) == 1 and failure.kind != "sandbox"):  # sandbox: tried again
        record_permanent(generator.engine, job_id, chunk, failure, problem_id=next(iter(pending), None))
        report.failed = len(pending)
        return report
    log.info("job %s chunk %s: running its %d pending problems one by one", job_id, chunk, len(pending))
    for problem_id in pending:
        try:
            part = generator.process_chunk(job_id, chunk, problem_ids=[problem_id])
        except Exception as problem_exc:
            failure = classify(problem_exc)
            if failure.transient:
                raise
            if failure.kind == "sandbox":  # again, with a fresh sandbox: it cannot run here
                failure = replace(failure, stops_job=True)
            record_permanent(
                generator.engine, job_id, chunk, failure, problem_id=None if failure.job_wide else problem_id
            )
            if failure.job_wide:
                break
            report.failed += 1
            continue
        report.problems += part.problems
        report.rationales += part.rationales
        report.valid += part.valid
        report.paid_calls += part.paid_calls
        report.cached_calls += part.cached_calls
    return report


def _report(job_id: int, chunk: int) -> ChunkReport:
    from services.generation.execute import ChunkReport

    return ChunkReport(job_id, chunk)


def _pending(engine: Engine, job_id: int, chunk: int) -> list[int]:
    with Session(engine) as session:
        return [pid for pid, state in chunk_problems(session, job_id, chunk) if state == "pending"]


def record_permanent(
    engine: Engine, job_id: int, chunk: int, failure: Failure, *, problem_id: int | None = None
) -> None:
    """Record a permanent failure on the job (a `job_failures` row naming this worker) and on
    its problems: a job-wide failure fails the job and all its pending problems; another fails
    `problem_id`, or every pending problem of the chunk. The job is closed if nothing is left."""
    worker = worker_id()
    shown = f"{failure.message} (worker {worker})"
    with Session(engine) as session, session.begin():
        if failure.job_wide:
            reason = f"{failure.kind} on worker {worker}, chunk {chunk}: {failure.message}"
            failed = fail_job(session, job_id, failure.kind, shown, safe_message(reason))
            touched = failed or 0
        else:
            ids = None if problem_id is None else [problem_id]
            touched = fail_pending(session, job_id, failure.kind, shown, chunk=chunk, problem_ids=ids)
        add_job_failure(
            session,
            job_id,
            failure.kind,
            failure.message,
            chunk=chunk,
            problem_id=problem_id,
            worker=worker,
            problems=touched,
        )
        finish_if_done(session, job_id)
    log.error("job %s chunk %s: %s failed %d problem(s): %s", job_id, chunk, failure.kind, touched, shown)


def give_up(engine: Engine, job_id: int, chunk: int, failure: Failure, retries: int) -> None:
    """After the last retry: log (ERROR), and record on the job if the database answers. The
    chunk's problems stay pending: `kpdd resume JOB` or the reconciler queues the chunk again."""
    message = (
        f"gave up after {retries} retries: {failure.message}; its pending problems stay pending "
        f"for `kpdd resume {job_id}` or the reconciler"
    )
    log.error("job %s chunk %s: %s", job_id, chunk, message)
    try:
        with Session(engine) as session, session.begin():
            add_job_failure(
                session, job_id, failure.kind, safe_message(message), chunk=chunk, worker=worker_id()
            )
    except Exception as exc:  # the outage goes on: the log line above is the record
        log.warning("job %s chunk %s: could not record giving up: %s", job_id, chunk, _describe(exc))


def close_problems(
    engine: Engine,
    job_id: int,
    problem_ids: list[int],
    failures: dict[int, tuple[str, str]],
    budget_hit: set[int],
) -> None:
    """The end of a chunk's run: each problem `done`, `failed` (its teacher call failed after
    retries: kind and message) or `budget`; a budget hit ends the job `budget_exhausted`; the
    job is closed when nothing is pending (`finish_if_done`)."""
    states: dict[int, tuple[str, str | None, str | None]] = {}
    for problem_id in problem_ids:
        if problem_id in budget_hit:
            states[problem_id] = ("budget", "budget", "the job's budget ran out before this problem")
        elif problem_id in failures:
            kind, message = failures[problem_id]
            states[problem_id] = ("failed", kind, safe_message(message))
        else:
            states[problem_id] = ("done", None, None)
    with engine.begin() as conn:  # Core statements only: this ends every chunk
        set_problem_states(conn, job_id, states)
        if budget_hit:
            stop_for_budget(conn, job_id)
        finish_if_done(conn, job_id)


def stop_for_budget(session: Session | Connection, job_id: int) -> None:
    """End the job `budget_exhausted`: its pending problems become `budget`."""
    job = session.execute(
        select(GenerationJob.status, GenerationJob.budget_usd, GenerationJob.spent_usd)
        .where(GenerationJob.id == job_id)
        .with_for_update()
    ).first()
    if job is not None and job.status not in JOB_TERMINAL_STATUSES:
        stop_pending(session, job_id, "budget", "the job's budget ran out")
        session.execute(
            update(JOBS_TABLE)
            .where(JOBS_TABLE.c.id == job_id)
            .values(
                status="budget_exhausted",
                stop_reason=f"budget of ${job.budget_usd} reached (spent ${job.spent_usd}); "
                "no further calls were issued",
                finished_at=datetime.now(UTC),
            )
        )


# --- retries -----------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class RetrySchedule:
    """Waits between retries of a chunk through an outage: 1, 2, 4 ... seconds, capped at a
    quarter of the visibility timeout (and 30 s), jittered in their upper half; as many retries
    as fill `window_s`.

    The cap matters: a retried task waits in its worker as an unacknowledged message, and Redis
    hands a message unacknowledged for longer than the visibility timeout to another worker, so
    a longer wait multiplies the copies of the chunk."""

    visibility_timeout_s: float
    window_s: float

    @classmethod
    def from_settings(cls) -> RetrySchedule:
        settings = get_settings()
        return cls(settings.visibility_timeout_s, settings.chunk_retry_window_s)

    @property
    def cap_s(self) -> float:
        return max(0.5, min(30.0, self.visibility_timeout_s / 4))

    def ceiling(self, retries: int) -> float:
        return min(self.cap_s, 2.0 ** min(retries, 16))

    def countdown(self, retries: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retries + 1`."""
        return self.ceiling(retries) * (0.5 + 0.5 * (rng or random).random())

    @property
    def max_retries(self) -> int:
        """Retries whose mean waits add up to the window."""
        total, retries = 0.0, 0
        while total < self.window_s:
            total += 0.75 * self.ceiling(retries)
            retries += 1
        return retries


# --- attempts and stops ------------------------------------------------------------------------


def cap_attempts(session: Session, job_id: int, chunk: int, started: list[int]) -> list[int]:
    """After a start was counted on `started` problems: fail those started more than
    `KPDD_CHUNK_MAX_DELIVERIES` times, with their chunk's last failure; return the others."""
    cap = get_settings().chunk_max_deliveries
    over = over_attempt_cap(session, job_id, started, cap)
    if not over:
        return started
    last = last_failure(session, job_id, chunk)
    because = (
        f"last failure of its chunk: {last.kind}: {last.message}"
        if last is not None
        else "no failure was recorded: its worker died or was stopped each time (out of memory?)"
    )
    message = safe_message(
        f"started {cap + 1} times without finishing (KPDD_CHUNK_MAX_DELIVERIES={cap}); {because}"
    )
    fail_pending(session, job_id, "attempt_cap", message, problem_ids=over)
    add_job_failure(
        session, job_id, "attempt_cap", message, chunk=chunk, worker=worker_id(), problems=len(over)
    )
    log.error("job %s chunk %s: %d problem(s) failed: %s", job_id, chunk, len(over), message)
    capped = set(over)
    return [p for p in started if p not in capped]


def stop_reason(engine: Engine, job_id: int) -> str | None:
    """Why no teacher call may be made for the job now (it has ended or is gone), or None."""
    with engine.connect() as conn:
        status = conn.execute(select(GenerationJob.status).where(GenerationJob.id == job_id)).scalar()
    if status is None:
        return f"job {job_id} is gone"
    return f"job {job_id} is {status}" if status in JOB_TERMINAL_STATUSES else None


def guarded(engine: Engine, job_id: int, ask: Callable[[Any], R]) -> Callable[[Any], R]:
    """`ask`, with the job's status consulted before each teacher call it makes (in whichever
    thread runs it): once the job has ended, its calls fail with kind `STOPPED` instead of being
    sent. The status is read at most every `STOP_CHECK_EVERY_S` by the threads of one chunk, and
    an ended job is never read again."""
    lock = threading.Lock()
    read_at = -math.inf
    reason: str | None = None

    def check() -> str | None:
        nonlocal read_at, reason
        with lock:
            now = time.monotonic()
            if reason is None and now - read_at >= STOP_CHECK_EVERY_S:
                reason, read_at = stop_reason(engine, job_id), now
            return reason

    def run(item: Any) -> R:
        token = CALL_GUARD.set(check)
        try:
            return ask(item)
        finally:
            CALL_GUARD.reset(token)

    return run


def was_stopped(outcome: RationaleOutcome) -> bool:
    """True when the guard stopped the rationale's calls: the job ended, nothing to record."""
    return isinstance(outcome.result, CallFailure) and outcome.result.kind == STOPPED


_JOB_STATUS = select(GenerationJob.status).where(GenerationJob.id == bindparam("job_id"))
_JOB_STATUS_SHARED = _JOB_STATUS.with_for_update(read=True)


def may_write(session: Session | Connection, job_id: int) -> bool:
    """Whether the job's rationales may still be written, read under a share lock on the job row
    in the writing transaction (module doc): False once it is cancelled or gone."""
    bind = session.get_bind() if isinstance(session, Session) else session
    query = _JOB_STATUS_SHARED if bind.dialect.name == "postgresql" else _JOB_STATUS
    status = session.execute(query, {"job_id": job_id}).scalar()
    return status is not None and status != "cancelled"


__all__ = [
    "STOPPED",
    "Failure",
    "RetrySchedule",
    "cap_attempts",
    "classify",
    "close_problems",
    "give_up",
    "guarded",
    "may_write",
    "record_permanent",
    "run_chunk",
    "safe_message",
    "stop_reason",
    "was_stopped",
]
