"""The Celery app and its two tasks: generation chunks and training runs. Start workers with `kpdd worker` (or
`celery -A workers.app worker`); run more of them, on any host pointed at the same Redis and
Postgres, to scale out.

Delivery: `acks_late` with `task_reject_on_worker_lost`, so a chunk whose worker dies (even by
SIGKILL) is delivered again: by the pool when one of its processes dies, by Redis once the
message's visibility timeout (`KPDD_VISIBILITY_TIMEOUT_S`) passes when the whole worker dies.
Every write the task makes is idempotent, so a second delivery finishes what the first started
and duplicates nothing. Database or broker outages make the task retry with backoff.

Each worker process builds its own engine, teacher clients, rate limiter and sandbox after the
fork (`worker_process_init`), never at import time; a worker that consumes only the training
queue (`kpdd worker --queues training`) builds none of them.

Training runs (`kpdd.training.run`, queue `kpdd.training`) are acknowledged when received, not
late: a run lasts far longer than any visibility timeout, and redelivering it would start a
second launcher. A worker that dies mid-run stops renewing the run's heartbeat instead, and the
run is marked failed with that reason (`services.training.runs`); `--resume auto` continues it
from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DBAPIError

from services.config import get_settings
from services.generation.dispatch import DEFAULT_QUEUE, PROCESS_CHUNK_TASK
from services.training.dispatch import TRAIN_RUN_TASK
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

app = Celery("kpdd")


def configure(celery_app: Celery) -> None:
    settings = get_settings()
    celery_app.conf.update(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # Sweep for messages of dead workers often enough that the visibility timeout, not
            # kombu's default sweep period (about 100 s), decides how soon they come back.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        },
        task_default_queue=DEFAULT_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
    )


configure(app)
_runtime: WorkerRuntime | None = None


def runtime() -> WorkerRuntime:
    """This process's runtime (built lazily, e.g. for the solo pool or tests)."""
    global _runtime
    if _runtime is None:
        _runtime = WorkerRuntime.from_settings(get_settings())
    return _runtime


@signals.worker_process_init.connect
def _init_process(**_: Any) -> None:
    global _runtime
    # One INFO line per HTTP request costs CPU at thousands of calls a second.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _runtime = None  # never reuse what the parent built before the fork
    if DEFAULT_QUEUE in os.environ.get("KPDD_WORKER_QUEUES", DEFAULT_QUEUE).split(","):
        runtime()


@signals.worker_process_shutdown.connect
def _close_process(**_: Any) -> None:
    if _runtime is not None:
        _runtime.close()


@app.task(
    name=PROCESS_CHUNK_TASK,
    bind=True,
    acks_late=True,
    autoretry_for=(DBAPIError, RedisConnectionError),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=40,
)
def process_chunk(self: Any, job_id: int, chunk: int) -> None:
    """Process one chunk of a job: ids in, one service call."""
    report = runtime().process_chunk(job_id, chunk)
    log.info("job %s chunk %s: %s", job_id, chunk, report)


@app.task(name=TRAIN_RUN_TASK, acks_late=False)
def train_run(run_id: int) -> None:
    """Prepare, launch and supervise one training run: ids in, one service call."""
    from db.engine import get_engine
    from services.training.runs import execute_run

    state = execute_run(get_engine(get_settings().resolved_database_url), run_id)
    log.info("training run %s: %s", run_id, state)
