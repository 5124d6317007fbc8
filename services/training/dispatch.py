"""Queued training runs: `kpdd train --submit` sends the run id to the Celery `training` queue,
where only workers started with `kpdd worker --queues training` (GPU hosts) take it.

The task name and queue are defined here and imported by `workers.app`, so both sides agree
(the CLI lives in `services`, which never imports `workers`). The message carries the run id
only: the worker loads the run from its database and claims it atomically (`queued` ->
`preparing`), so a second delivery, or a run cancelled meanwhile, does nothing.
"""

from __future__ import annotations

from services.generation.dispatch import DEFAULT_QUEUE

TRAIN_RUN_TASK = "kpdd.training.run"
TRAINING_QUEUE = "kpdd.training"
# Short names `kpdd worker --queues` accepts for the full queue names.
QUEUE_ALIASES = {"generation": DEFAULT_QUEUE, "training": TRAINING_QUEUE}


def resolve_queues(text: str) -> list[str]:
    """`generation,training` -> the Celery queue names."""
    return [QUEUE_ALIASES.get(name.strip(), name.strip()) for name in text.split(",") if name.strip()]


def submit_run(broker_url: str, run_id: int) -> None:
    """Send one `kpdd.training.run(run_id)` message; raises what kombu raises when the broker is
    unreachable (the caller marks the run failed)."""
    from celery import Celery

    app = Celery("kpdd-client", broker=broker_url)
    app.conf.broker_connection_retry_on_startup = False
    app.conf.broker_connection_max_retries = 2
    try:
        app.send_task(TRAIN_RUN_TASK, args=[run_id], queue=TRAINING_QUEUE)
    finally:
        app.close()
