"""Queuing chunks of a job: on Celery (a broker is configured) or in-process (embedded default).

The CLI lives in `services`, which must not import `workers`; it sends tasks by name. The name
and the queue are defined here and imported by `workers.app`, so both sides agree.

Sending a chunk is recorded on its `job_chunks` row: `queued_at` is set (and any earlier
`enqueue_error` cleared) before the message is sent, and a send that fails records
`enqueue_error`. Every message carries the deployment id of the database (`deployment=`), which
a worker of another deployment refuses (`services.generation.deployment`). A chunk whose message
is lost (a Redis wipe, a failed send, a crash between the two) is queued again by the reconciler
(`workers.reconciler`) or by `kpdd resume`.

Nothing here waits long for a broker that is down: a connection attempt gives up after
`CONNECT_TIMEOUT_S`, and a send is retried `PUBLISH_RETRIES` times, so a broker that is down or
misconfigured fails `kpdd generate` in seconds (`check_broker` before the job is written).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from services.errors import ConfigError, RunFailure

if TYPE_CHECKING:
    from sqlalchemy import Engine

PROCESS_CHUNK_TASK = "kpdd.generation.process_chunk"
DEFAULT_QUEUE = "kpdd.generation"
CONNECT_TIMEOUT_S = 3.0
PUBLISH_RETRIES = 2


class Dispatcher(Protocol):
    def enqueue(self, job_id: int, chunks: Sequence[int]) -> None: ...


def shown_url(url: str) -> str:
    """The broker URL fit for a message (its password masked)."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def check_broker(broker_url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Connect to the broker once, within `timeout_s` or so. ConfigError for a URL no transport
    reads (a bad scheme), RunFailure for a broker that cannot be reached, each one line that
    names KPDD_BROKER_URL."""
    from kombu import Connection

    try:
        connection = Connection(
            broker_url,
            connect_timeout=timeout_s,
            transport_options={"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s},
        )
    except (KeyError, ValueError) as exc:
        raise ConfigError(_bad_scheme(broker_url, exc)) from None
    try:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5, timeout=timeout_s)
    except (KeyError, ValueError) as exc:
        raise ConfigError(_bad_scheme(broker_url, exc)) from None
    except Exception as exc:  # kombu and the transports raise many kinds; each means "unreachable"
        raise RunFailure(
            f"cannot reach the broker {shown_url(broker_url)} (KPDD_BROKER_URL): {_first_line(exc)}; "
            "start it or fix the URL, then run the command again"
        ) from None
    finally:
        connection.release()


def _bad_scheme(url: str, exc: BaseException) -> str:
    scheme = url.split("://", 1)[0] if "://" in url else url[:20]
    return (
        f"KPDD_BROKER_URL {shown_url(url)!r} is not a broker URL ({_first_line(exc)}; scheme "
        f"{scheme!r}): use redis://host:6379/0"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().strip("'\"") or type(exc).__name__
    return text.splitlines()[0]


class CeleryDispatcher:
    """Sends one `process_chunk(job_id, chunk, deployment=...)` message per chunk to the broker,
    recording each send on the chunk's `job_chunks` row in `engine` (default: the configured
    database)."""

    def __init__(self, broker_url: str, queue: str = DEFAULT_QUEUE, engine: Engine | None = None) -> None:
        from celery import Celery

        self.broker_url = broker_url
        self.app = Celery("kpdd-client", broker=broker_url, set_as_current=False)
        self.app.conf.update(
            broker_connection_retry_on_startup=False,
            broker_connection_timeout=CONNECT_TIMEOUT_S,
            broker_connection_max_retries=PUBLISH_RETRIES,
            broker_transport_options={
                "socket_connect_timeout": CONNECT_TIMEOUT_S,
                "socket_timeout": 10 * CONNECT_TIMEOUT_S,
            },
            task_publish_retry_policy={
                "max_retries": PUBLISH_RETRIES,
                "interval_start": 0.2,
                "interval_step": 0.5,
                "interval_max": 1.0,
            },
        )
        self.queue = queue
        self._engine = engine

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from db.engine import get_engine
            from services.config import get_settings

            self._engine = get_engine(get_settings().resolved_database_url)
        return self._engine

    def enqueue(self, job_id: int, chunks: Sequence[int]) -> None:
        """Send the chunks; RunFailure (after recording `enqueue_error` on the chunks not sent)
        when the broker cannot take them."""
        from sqlalchemy.orm import Session

        from db.queries.operations import db_now, mark_enqueue_failed, mark_queued
        from services.generation.deployment import own_deployment_id

        if not chunks:
            return
        deployment = own_deployment_id(self.engine)
        with Session(self.engine) as session, session.begin():
            mark_queued(session, job_id, chunks, db_now(session))
        sent = 0
        try:
            with self.app.producer_or_acquire() as producer:
                for chunk in chunks:
                    self.app.send_task(
                        PROCESS_CHUNK_TASK,
                        args=[job_id, chunk],
                        kwargs={"deployment": deployment},
                        queue=self.queue,
                        producer=producer,
                    )
                    sent += 1
        except Exception as exc:  # any failure to hand a message over: record it, say so once
            message = f"cannot send to the broker {shown_url(self.broker_url)}: {_first_line(exc)}"
            with Session(self.engine) as session, session.begin():
                mark_enqueue_failed(session, job_id, list(chunks[sent:]), message)
            raise EnqueueFailed(job_id, len(chunks) - sent, message) from None

    def close(self) -> None:
        self.app.close()


class EnqueueFailed(RunFailure):
    """Some chunks of a recorded job could not be sent; they carry `enqueue_error` and will be
    queued by the reconciler of a running worker, or by `kpdd resume JOB`."""

    def __init__(self, job_id: int, unsent: int, message: str) -> None:
        self.job_id = job_id
        self.unsent = unsent
        super().__init__(
            f"job {job_id} is recorded but {unsent} of its chunks were not queued ({message}); "
            f"once the broker is reachable the workers' reconciler queues them, or run `kpdd resume {job_id}`"
        )


class InlineDispatcher:
    """Runs each chunk here and now, in this process: the embedded default (no broker)."""

    def __init__(self, run_chunk: Callable[[int, int], object]) -> None:
        self.run_chunk = run_chunk

    def enqueue(self, job_id: int, chunks: Sequence[int]) -> None:
        for chunk in chunks:
            self.run_chunk(job_id, chunk)
