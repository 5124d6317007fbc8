"""The batch poller in a worker: `services.generation.batches.BatchPoller.cycle()` every
`KPDD_BATCH_POLL_INTERVAL_S`, as a daemon thread of the first process of each worker's pool
(like the reconciler). Cycles are serialised across the deployment by a Postgres advisory lock:
any worker may run one, none runs two at once, and a dead worker's lock goes with its
connection. Chunks whose batch answers are in are queued through the same `CeleryDispatcher` as
`kpdd generate`; a chunk that cannot be sent waits again for the next cycle. A busy cycle (it
sent, ingested or queued something) is followed by another at once."""

from __future__ import annotations

import logging
import random
import threading

from services.generation.batches import BatchPoller
from services.generation.dispatch import CeleryDispatcher
from services.generation.execute import Generator
from workers.reconciler import first_pool_process_broker

log = logging.getLogger(__name__)


class PollerThread(threading.Thread):
    def __init__(self, generator: Generator, broker_url: str) -> None:
        super().__init__(name="kpdd-batch-poller", daemon=True)
        self.poller = BatchPoller(generator.engine, generator.client_factory)
        self.broker_url = broker_url
        self.engine = generator.engine
        self.stopped = threading.Event()
        self.dispatcher: CeleryDispatcher | None = None

    def run(self) -> None:
        interval = self.poller.settings.poll_interval_s
        delay = random.uniform(0.1, 0.5) * interval
        while not self.stopped.wait(delay):
            delay = interval * random.uniform(0.9, 1.1)
            try:
                report = self.poller.cycle()
                for job_id, chunks in report.requeue.items():
                    self._queue(job_id, chunks)
                if report.busy():
                    delay = min(delay, 0.2)
            except Exception as exc:  # the database, broker or provider is away: next period
                log.warning("batch poller: cycle failed, trying again in %.0f s: %s", delay, exc)
        self.poller.close()
        if self.dispatcher is not None:
            self.dispatcher.close()

    def _queue(self, job_id: int, chunks: list[int]) -> None:
        try:
            if self.dispatcher is None:
                self.dispatcher = CeleryDispatcher(self.broker_url, engine=self.engine)
            self.dispatcher.enqueue(job_id, chunks)
            log.info(
                "batch poller: job %s: %d chunk(s) with their batch answers in queued again",
                job_id,
                len(chunks),
            )
        except Exception as exc:
            log.warning(
                "batch poller: job %s: queueing %d chunk(s) failed, next cycle: %s", job_id, len(chunks), exc
            )
            self.poller.restore_waiting(job_id, chunks)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


_running: PollerThread | None = None


def start_in_pool_process(generator: Generator) -> PollerThread | None:
    """Start the poller in this pool process if it is the pool's first (index 0)."""
    global _running
    broker = first_pool_process_broker()
    if broker is None:
        return None
    _running = PollerThread(generator, broker)
    _running.start()
    return _running


def stop() -> None:
    global _running
    if _running is not None:
        _running.stop()
        _running = None
