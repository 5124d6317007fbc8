"""Chunk leases: which worker is working a chunk now, renewed by a heartbeat while it runs.

A worker starting a chunk (`hold_chunk`) counts the delivery on the chunk's `job_chunks` row
and takes its lease: `worker` = `host:pid`, `lease_until` = now + `lease_period_s()`, by the
database's clock. A heartbeat thread renews it every third of the period until the chunk's work
returns; the lease is then released (also when the work raised).

A second delivery of a chunk whose lease is live (another worker is still running it) is
**skipped**, not waited for: the task returns at once and its message is acknowledged. This is
also what keeps a chunk that runs past the broker's visibility timeout from being worked twice
when Redis hands its message to another worker. Nothing is lost by skipping: if the holder
finishes, the chunk is done; if it dies, its lease expires and Redis redelivers its unacked
message, or, when that message was the one acknowledged by the skip, the reconciler
(`workers.reconciler`) queues the chunk again.

The lease period is half the visibility timeout (`KPDD_VISIBILITY_TIMEOUT_S`), at least 2 s:
a worker that dies mid-chunk has lost its lease by the time Redis redelivers its message, so
the redelivery is worked, not skipped. A worker may take a lease it already holds (its own task,
retried). A heartbeat that cannot reach the database only logs: while the database is away the
chunk's own writes fail too, and an expired lease costs at most a second worker doing the same
idempotent work.

The lease says who works a chunk; it does not make two workers' writes safe — the writes are
idempotent for that (`services.generation.execute`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from db.queries.operations import db_now, release_lease, renew_lease, take_lease
from services.config import get_settings

log = logging.getLogger(__name__)

MIN_LEASE_S = 2.0


def worker_id() -> str:
    """This process as a lease holder: `host:pid` (read at each call: pool processes fork)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lease_period_s(visibility_timeout_s: float | None = None) -> float:
    """How long a lease lasts without renewal: half the visibility timeout, at least 2 s."""
    timeout = get_settings().visibility_timeout_s if visibility_timeout_s is None else visibility_timeout_s
    return max(MIN_LEASE_S, timeout / 2)


@dataclass(slots=True)
class ChunkLease:
    """The outcome of asking for a chunk: `taken`, or held by `holder` until `held_until`
    (`holder` None: the job is gone)."""

    job_id: int
    chunk: int
    worker: str
    taken: bool
    holder: str | None = None
    held_until: datetime | None = None

    def skip_reason(self) -> str:
        if self.holder is None:
            return "the job is gone"
        until = f" until {self.held_until:%H:%M:%S}" if self.held_until is not None else ""
        return f"chunk {self.chunk} is being worked by {self.holder} (lease{until})"


class _Heartbeat(threading.Thread):
    def __init__(self, engine: Engine, lease: ChunkLease, period_s: float) -> None:
        super().__init__(name=f"kpdd-lease-{lease.job_id}-{lease.chunk}", daemon=True)
        self.engine = engine
        self.lease = lease
        self.period_s = period_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period_s / 3):
            try:
                with Session(self.engine) as session, session.begin():
                    until = db_now(session) + timedelta(seconds=self.period_s)
                    held = renew_lease(session, self.lease.job_id, self.lease.chunk, self.lease.worker, until)
                if not held:
                    log.warning(
                        "job %s chunk %s: the lease expired and another worker took it; both now "
                        "work it (harmless: every write is idempotent)",
                        self.lease.job_id,
                        self.lease.chunk,
                    )
            except DBAPIError as exc:
                log.warning(
                    "job %s chunk %s: lease not renewed: %s", self.lease.job_id, self.lease.chunk, exc
                )

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)


@contextmanager
def hold_chunk(
    engine: Engine, job_id: int, chunk: int, *, period_s: float | None = None
) -> Iterator[ChunkLease]:
    """Take the chunk's lease for the block, renewed by a heartbeat; check `lease.taken` first
    (False: another worker holds a live lease, skip the chunk). Released on the way out."""
    period = lease_period_s() if period_s is None else period_s
    me = worker_id()
    with Session(engine) as session, session.begin():
        now = db_now(session)
        holder = take_lease(session, job_id, chunk, me, now, now + timedelta(seconds=period))
    if holder is not None:
        yield ChunkLease(job_id, chunk, me, False, holder.worker, holder.lease_until)
        return
    lease = ChunkLease(job_id, chunk, me, True)
    beat = _Heartbeat(engine, lease, period)
    beat.start()
    try:
        yield lease
    finally:
        beat.stop()
        try:
            with Session(engine) as session, session.begin():
                release_lease(session, job_id, chunk, me)
        except DBAPIError as exc:  # it expires by itself
            log.warning("job %s chunk %s: lease not released: %s", job_id, chunk, exc)
