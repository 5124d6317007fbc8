"""The reconciler: re-queues chunks whose message is gone, so a job survives a broker that lost
its queue (Redis restarted empty, a failed send, a submitter that died before sending) without
anyone running `kpdd resume`.

**Where it runs.** In every `kpdd worker` that consumes the generation queue, as a daemon thread
in the first process of its pool (pool index 0; a replaced process takes its index and starts
the thread again), started from `worker_process_init`. Every `KPDD_RECONCILE_INTERVAL_S`
(default 30 s, with 10% jitter) it tries to sweep. Sweeps are serialised across every host of
the deployment by a Postgres advisory lock held for the sweep's transaction
(`pg_try_advisory_xact_lock`): a worker that does not get it skips its turn.

**What a sweep re-queues.** Chunks of jobs still `queued` or `running` that were meant for the
broker (`job_chunks.queued_at` set) with a pending problem and no live lease, and either

- whose last send failed (`enqueue_error`): at once, or
- queued longer ago than `KPDD_VISIBILITY_TIMEOUT_S` (a grace for a message on its way from
  the submitter, or between Redis's queue and a worker's unacked set),

and that the broker does not hold: on Redis the sweep reads the generation queue and the
transport's `unacked` hash (messages delivered to a worker and not yet acknowledged, ETA
retries included) and leaves out every chunk it finds there, so a long backlog is not queued
twice. On another broker it cannot look, and re-queues by age alone (a duplicate is skipped by
the chunk's lease or finds no pending problem: harmless, and cheap). At most `SWEEP_LIMIT`
chunks per sweep, through the same `CeleryDispatcher` as `kpdd generate` (deployment id,
`queued_at` and `enqueue_error` recorded); a send that fails is logged and left for the next
sweep.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db.queries.operations import db_now, stale_chunks, try_sweep_lock
from services.config import get_settings
from services.errors import KpddError
from services.generation.dispatch import DEFAULT_QUEUE, PROCESS_CHUNK_TASK, CeleryDispatcher

log = logging.getLogger(__name__)

SWEEP_LIMIT = 1000
# kombu's Redis transport: priority queues are `<queue><SEP><step>`, unacked messages a hash.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
_UNACKED_KEY = "unacked"
_PAGE = 1000


@dataclass(slots=True)
class SweepReport:
    swept: bool  # False: another sweep held the lock
    candidates: int = 0
    in_broker: int = 0
    requeued: dict[int, list[int]] = field(default_factory=dict)

    @property
    def requeued_chunks(self) -> int:
        return sum(len(chunks) for chunks in self.requeued.values())


def _chunk_of(payload: Any) -> tuple[int, int] | None:
    """(job id, chunk) of a kombu message payload of a chunk task, or None."""
    if not isinstance(payload, dict):
        return None
    if (payload.get("headers") or {}).get("task") != PROCESS_CHUNK_TASK:
        return None
    body: Any = payload.get("body")
    try:
        if (payload.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return int(args[0]), int(args[1])
    except (ValueError, TypeError, IndexError, KeyError):
        return None


def broker_held_chunks(broker_url: str, queue: str = DEFAULT_QUEUE) -> set[tuple[int, int]] | None:
    """(job id, chunk) of every chunk message the broker holds, queued or delivered and not yet
    acknowledged; None when the broker is not Redis (it cannot be read)."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=10, socket_connect_timeout=5)
    held: set[tuple[int, int]] = set()
    try:
        for key in (queue, *(f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS)):
            start = 0
            while True:
                page: list[bytes] = client.lrange(key, start, start + _PAGE - 1)  # type: ignore[assignment]
                for raw in page:
                    found = _chunk_of(_loads(raw))
                    if found is not None:
                        held.add(found)
                if len(page) < _PAGE:
                    break
                start += _PAGE
        for _tag, raw in client.hscan_iter(_UNACKED_KEY, count=_PAGE):
            entry = _loads(raw)
            found = _chunk_of(entry[0] if isinstance(entry, list) and entry else None)
            if found is not None:
                held.add(found)
    finally:
        client.close()
    return held


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def sweep(
    engine: Engine,
    dispatcher: CeleryDispatcher,
    *,
    visibility_timeout_s: float,
    broker_url: str,
    limit: int = SWEEP_LIMIT,
) -> SweepReport:
    """One sweep (see the module docstring); the lock is held until it returns."""
    with Session(engine) as session, session.begin():
        if not try_sweep_lock(session):
            return SweepReport(swept=False)
        now = db_now(session)
        candidates = stale_chunks(session, now, now - timedelta(seconds=visibility_timeout_s), limit)
        report = SweepReport(swept=True, candidates=len(candidates))
        if not candidates:
            return report
        held = broker_held_chunks(broker_url, dispatcher.queue) or set()
        todo: dict[int, list[int]] = defaultdict(list)
        for job_id, chunk, _failed in candidates:
            if (job_id, chunk) in held:
                report.in_broker += 1
            else:
                todo[job_id].append(chunk)
        for job_id, chunks in todo.items():
            try:
                dispatcher.enqueue(job_id, chunks)
            except KpddError as exc:
                log.warning("reconciler: %s", exc)
                continue
            report.requeued[job_id] = chunks
            log.warning(
                "reconciler: job %s: %d chunk(s) with pending problems had no message in the broker "
                "and no worker; queued again: %s",
                job_id,
                len(chunks),
                ", ".join(map(str, chunks[:20])) + (" ..." if len(chunks) > 20 else ""),
            )
        return report


class Reconciler(threading.Thread):
    """The periodic sweep, as a daemon thread (`start()`, `stop()`)."""

    def __init__(
        self, engine: Engine, broker_url: str, interval_s: float, visibility_timeout_s: float
    ) -> None:
        super().__init__(name="kpdd-reconciler", daemon=True)
        self.engine = engine
        self.broker_url = broker_url
        self.interval_s = interval_s
        self.visibility_timeout_s = visibility_timeout_s
        self.stopped = threading.Event()
        self.dispatcher: CeleryDispatcher | None = None

    def run(self) -> None:
        delay = random.uniform(0.2, 1.0) * self.interval_s
        while not self.stopped.wait(delay):
            delay = self.interval_s * random.uniform(0.9, 1.1)
            try:
                if self.dispatcher is None:
                    self.dispatcher = CeleryDispatcher(self.broker_url, engine=self.engine)
                sweep(
                    self.engine,
                    self.dispatcher,
                    visibility_timeout_s=self.visibility_timeout_s,
                    broker_url=self.broker_url,
                )
            except Exception as exc:  # the database or broker is away: try again next period
                log.warning("reconciler: sweep failed, trying again in %.0f s: %s", delay, exc)
        if self.dispatcher is not None:
            self.dispatcher.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


_running: Reconciler | None = None


def first_pool_process_broker() -> str | None:
    """The broker URL when this is the first process (index 0) of a worker's pool and a broker
    is set: where the deployment-wide daemon threads (this reconciler, the batch poller) run."""
    from billiard.process import current_process

    broker = get_settings().broker_url
    if not broker or getattr(current_process(), "index", 0) != 0:
        return None
    return broker


def start_in_pool_process(engine: Engine) -> Reconciler | None:
    """Start the reconciler in this pool process if it is the pool's first (index 0)."""
    global _running
    broker = first_pool_process_broker()
    if broker is None:
        return None
    settings = get_settings()
    _running = Reconciler(engine, broker, settings.reconcile_interval_s, settings.visibility_timeout_s)
    _running.start()
    return _running


def stop() -> None:
    global _running
    if _running is not None:
        _running.stop()
        _running = None
