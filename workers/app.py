"""The Celery app and its two tasks: generation chunks and training runs. Start workers with `kpdd worker` (or
`celery -A workers.app worker`); run more of them, on any host pointed at the same Redis and
Postgres, to scale out.

Delivery: `acks_late` with `task_reject_on_worker_lost`, so a chunk whose worker dies (even by
SIGKILL) is delivered again: by the pool when one of its processes dies, by Redis once the
message's visibility timeout (`KPDD_VISIBILITY_TIMEOUT_S`) passes when the whole worker dies.
Every write the task makes is idempotent, so a second delivery finishes what the first started
and duplicates nothing.

Errors (`services.generation.failures`): a permanent one (a missing provider key, a bad value, a
bug) is recorded on the job and its problems and never retried; a transient one (the database
or broker unreachable) retries the chunk, each wait capped at a quarter of the visibility
timeout so that a waiting retry is never handed to a second worker, for
`KPDD_CHUNK_RETRY_WINDOW_S`; then the task gives up (logged at ERROR) and the chunk's problems
stay pending for `kpdd resume` and the reconciler.

Who may run a chunk (`services.generation.deployment`): a task carries its deployment id; one
of another deployment, or of a job this worker is configured differently for in a way that
changes results, is refused with one log line and goes back to the queue (rejected with
requeue, never acknowledged). The first process of each worker's pool also runs the reconciler
(`workers.reconciler`), which re-queues chunks whose message the broker lost, and the batch
poller (`workers.batch_poller`), which sends, polls and ingests provider batches.

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
import time
from typing import Any

from celery import Celery, signals
from celery.exceptions import Reject, Retry

from services.config import get_settings
from services.generation.deployment import REFUSAL_PAUSE_S, REFUSED, admit_chunk
from services.generation.dispatch import DEFAULT_QUEUE, PROCESS_CHUNK_TASK
from services.generation.failures import RetrySchedule, classify, give_up, record_permanent
from services.training.dispatch import TRAIN_RUN_TASK
from workers import batch_poller, metrics, reconciler
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
        reconciler.start_in_pool_process(runtime().generator.engine)  # workers.reconciler
        batch_poller.start_in_pool_process(runtime().generator)  # workers.batch_poller


@signals.worker_init.connect
def _init_main(**_: Any) -> None:
    """The Celery main process: serve the pool's metrics when a port is set (workers.metrics)."""
    port = os.environ.get("KPDD_WORKER_METRICS_PORT")
    if port and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics.serve(int(port))


@signals.worker_process_shutdown.connect
def _close_process(**_: Any) -> None:
    metrics.process_gone()
    reconciler.stop()
    batch_poller.stop()
    if _runtime is not None:
        _runtime.close()


class _OneLinePerRefusal(logging.Filter):
    """Celery logs every rejected task at WARNING with a traceback; a refused chunk (another
    deployment's, or one this worker is configured differently for) has its own line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        return not (
            isinstance(data, dict)
            and data.get("description") == "rejected"
            and REFUSED in str(data.get("exc"))
        )


logging.getLogger("celery.app.trace").addFilter(_OneLinePerRefusal())


@app.task(name=PROCESS_CHUNK_TASK, bind=True, acks_late=True)
def process_chunk(self: Any, job_id: int, chunk: int, deployment: str | None = None) -> None:
    """Process one chunk of a job: ids in, one service call. `deployment`: the submitter's
    deployment id (None in messages queued before it existed)."""
    # Deployment and configuration checks (services.generation.deployment): a task of another
    # deployment, or one needing settings this worker lacks, goes back to the queue, never acked.
    try:
        refusal = admit_chunk(runtime().generator.engine, job_id, chunk, deployment)
        if refusal is not None:
            if refusal.log:
                log.error("%s", refusal.message)
            time.sleep(REFUSAL_PAUSE_S)
            raise Reject(refusal.message, requeue=True)
        # Errors: classified, recorded, retried or given up on (module doc, `_after_error`).
        report = runtime().process_chunk(job_id, chunk)
    except Reject:
        raise
    except Exception as exc:
        _after_error(self, job_id, chunk, exc)
        return
    metrics.count_chunk(report)
    log.info("job %s chunk %s: %s", job_id, chunk, report)


def _after_error(task: Any, job_id: int, chunk: int, exc: Exception) -> None:
    """Retry a transient error (raises celery's Retry) and give up after the last retry; record
    a permanent one that `run_chunk` could not (the runtime itself failed to start)."""
    from db.engine import get_engine

    failure = classify(exc)
    engine = get_engine(get_settings().resolved_database_url)
    if not failure.transient:
        log.error("job %s chunk %s: %s: %s", job_id, chunk, failure.kind, failure.message, exc_info=exc)
        try:
            record_permanent(engine, job_id, chunk, failure)
        except Exception as again:  # its problems stay pending: the attempt cap ends them
            log.error("job %s chunk %s: could not record the failure: %s", job_id, chunk, again)
        return
    schedule = RetrySchedule.from_settings()
    retries = int(task.request.retries or 0)
    if retries < schedule.max_retries:
        countdown = schedule.countdown(retries)
        log.warning(
            "job %s chunk %s: %s (%s); retry %d of %d in %.1f s",
            job_id,
            chunk,
            failure.kind,
            failure.message,
            retries + 1,
            schedule.max_retries,
            countdown,
        )
        try:
            raise task.retry(exc=exc, countdown=countdown, max_retries=schedule.max_retries)
        except Retry:
            raise
        except Exception as publish_error:  # the broker cannot take the retry either
            failure = classify(publish_error)
    give_up(engine, job_id, chunk, failure, retries)


@app.task(name=TRAIN_RUN_TASK, acks_late=False)
def train_run(run_id: int) -> None:
    """Prepare, launch and supervise one training run: ids in, one service call."""
    from db.engine import get_engine
    from services.training.runs import execute_run

    state = execute_run(get_engine(get_settings().resolved_database_url), run_id)
    log.info("training run %s: %s", run_id, state)
