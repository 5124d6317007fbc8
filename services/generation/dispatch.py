"""Queuing chunks of a job: on Celery (a broker is configured) or in-process (embedded default).

The CLI lives in `services`, which must not import `workers`; it sends tasks by name. The name
and the queue are defined here and imported by `workers.app`, so both sides agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

PROCESS_CHUNK_TASK = "kpdd.generation.process_chunk"
DEFAULT_QUEUE = "kpdd.generation"


class Dispatcher(Protocol):
    def enqueue(self, job_id: int, chunks: Sequence[int]) -> None: ...


class CeleryDispatcher:
    """Sends one `process_chunk(job_id, chunk)` message per chunk to the broker."""

    def __init__(self, broker_url: str, queue: str = DEFAULT_QUEUE) -> None:
        from celery import Celery

        self.app = Celery("kpdd-client", broker=broker_url)
        self.app.conf.broker_connection_retry_on_startup = True
        self.queue = queue

    def enqueue(self, job_id: int, chunks: Sequence[int]) -> None:
        with self.app.producer_or_acquire() as producer:
            for chunk in chunks:
                self.app.send_task(
                    PROCESS_CHUNK_TASK, args=[job_id, chunk], queue=self.queue, producer=producer
                )

    def close(self) -> None:
        self.app.close()


class InlineDispatcher:
    """Runs each chunk here and now, in this process: the embedded default (no broker)."""

    def __init__(self, run_chunk: Callable[[int, int], object]) -> None:
        self.run_chunk = run_chunk

    def enqueue(self, job_id: int, chunks: Sequence[int]) -> None:
        for chunk in chunks:
            self.run_chunk(job_id, chunk)
