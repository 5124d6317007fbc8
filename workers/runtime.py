"""What one worker process holds: the engine, the shared rate limiter, and the `Generator`
(teacher clients, thread pool, sandbox) that runs chunks. Built after the fork, closed at exit.

The clients it builds take from the shared limiter before every attempt (`before_attempt`): one
request, and the request's token estimate (`services.teachers.tokens.request_tokens`: prompt plus
`max_tokens`, as providers reserve). After an answer (`after_response`) the estimate is settled
with the usage the provider reported, so a tokens-per-minute limit is used in full rather than
at the ratio of real to reserved tokens; after an error answered by the provider (a status
code: nothing was generated) it is refunded. A 429 makes every worker back off.

A wait for the limiter ends, the call failing before anything is sent, when it passes
`KPDD_RATE_LIMIT_WAIT_MAX_S` (kind `rate_limit_wait`), when the call's job has ended (kind
`job_stopped`, asked through `services.teachers.rationale.CALL_GUARD` after every slice of the
wait) or when the worker is stopping (kind `worker_stopping`: `WorkerRuntime.close`, SIGTERM).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import redis

from db.engine import get_engine
from services.config import Settings
from services.generation.execute import ChunkReport, ClientFactory, Generator
from services.generation.failures import run_chunk
from services.teachers.base import TeacherClient, TeacherRequest, TeacherResponse
from services.teachers.errors import TeacherCallError
from services.teachers.rationale import CALL_GUARD, STOPPED
from services.teachers.registry import build_client
from services.teachers.spec import TeacherSpec
from services.teachers.tokens import request_tokens
from workers import metrics
from workers.ratelimit import RateLimiter, RateLimits, RateLimitTimeout

log = logging.getLogger(__name__)

# Pause every worker this long on a 429 that carries no Retry-After.
DEFAULT_BACK_OFF_S = 1.0
DEFAULT_WAIT_MAX_S = 600.0


def estimated_tokens(request: TeacherRequest, spec: TeacherSpec) -> int:
    """Tokens a request counts against a tokens-per-minute limit before its usage is known."""
    return request_tokens(request.prompt, spec.options.max_tokens)


class _StopCheck:
    """`should_stop` for one limiter wait: the worker is stopping, or the call's job has ended
    (the guard the generation thread set). Remembers why, for the call's error."""

    def __init__(self, stopping: threading.Event) -> None:
        self.stopping = stopping
        self.guard = CALL_GUARD.get()  # read in the calling thread, where it was set
        self.kind: Any = None
        self.reason = ""

    def __call__(self) -> bool:
        if self.stopping.is_set():
            self.kind, self.reason = "worker_stopping", "the worker is shutting down"
            return True
        reason = self.guard() if self.guard is not None else None
        if reason is not None:
            self.kind, self.reason = STOPPED, reason
            return True
        return False


def limited_client_factory(
    limiter: RateLimiter | None,
    database_url: str,
    *,
    wait_max_s: float = DEFAULT_WAIT_MAX_S,
    stopping: threading.Event | None = None,
    settle: bool = True,
) -> ClientFactory:
    """A client factory whose clients take from the shared limiter before every attempt, settle
    its token estimate after every answer, and make every worker back off when a provider
    answers 429 (module doc). `settle=False` keeps the estimates as charged (the benchmark's
    baseline: `benchmarks/bench_ratelimit.py`)."""
    stop_event = stopping or threading.Event()

    def factory(spec: TeacherSpec) -> TeacherClient:
        limits = RateLimits(spec.options.rpm, spec.options.tpm)
        if limiter is None:
            return build_client(spec, database_url=database_url)
        reserved = threading.local()  # the tokens taken for this thread's attempt in progress

        def before_attempt(request: TeacherRequest) -> None:
            reserved.tokens = 0
            if limits.unlimited:
                return
            tokens = estimated_tokens(request, spec) if limits.tokens_per_minute is not None else 0
            stop = _StopCheck(stop_event)
            try:
                limiter.acquire(
                    spec.provider, spec.model, limits, tokens, timeout_s=wait_max_s, should_stop=stop
                )
            except RateLimitTimeout as exc:
                if stop.kind is not None:
                    message = f"{stop.reason} while waiting for the rate limiter"
                    raise TeacherCallError(stop.kind, message) from None
                raise TeacherCallError(
                    "rate_limit_wait", f"{exc} (raise KPDD_RATE_LIMIT_WAIT_MAX_S or the rpm/tpm options)"
                ) from None
            reserved.tokens = tokens

        def correct(actual: int) -> None:
            tokens, reserved.tokens = getattr(reserved, "tokens", 0), 0
            if not settle or not tokens:
                return
            try:
                limiter.settle(spec.provider, spec.model, limits, reserved=tokens, actual=actual)
            except redis.RedisError as exc:  # the estimate stays charged: errs on the safe side
                log.warning("could not settle %s's token estimate: %s", spec.label, exc)

        def after_response(request: TeacherRequest, response: TeacherResponse) -> None:
            metrics.count_answer(spec.provider, spec.model, response.tokens_in, response.tokens_out)
            if response.tokens_in is not None and response.tokens_out is not None:
                correct(response.tokens_in + response.tokens_out)
            else:
                reserved.tokens = 0  # no usage reported: the estimate stands

        def on_failure(error: TeacherCallError) -> None:
            metrics.count_error(spec.provider, spec.model, error.kind)
            if error.status_code is not None:  # answered with an error: nothing was generated
                correct(0)
            else:  # a timeout or a lost connection may have been processed: the estimate stands
                reserved.tokens = 0
            if error.kind == "rate_limit":
                wait = error.retry_after_s or DEFAULT_BACK_OFF_S
                log.warning("%s answered 429: every worker pauses %.1f s", spec.label, wait)
                limiter.back_off(spec.provider, spec.model, wait)

        return build_client(
            spec,
            database_url=database_url,
            before_attempt=before_attempt,
            on_failure=on_failure,
            after_response=after_response,
        )

    return factory


class WorkerRuntime:
    def __init__(self, generator: Generator, stopping: threading.Event | None = None) -> None:
        self.generator = generator
        # Set when the worker stops: limiter waits of its threads end (kind worker_stopping).
        self.stopping = stopping or threading.Event()

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerRuntime:
        url = settings.resolved_database_url
        limiter = None
        if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
            limiter = RateLimiter(redis.Redis.from_url(settings.broker_url))
        stopping = threading.Event()
        generator = Generator(
            get_engine(url, pool_size=settings.worker_threads + 4),
            limited_client_factory(
                limiter, url, wait_max_s=settings.rate_limit_wait_max_s, stopping=stopping
            ),
            threads=settings.worker_threads,
            sandbox_parallelism=settings.sandbox_workers,
            # Sandbox mode: strict in a worker unless KPDD_SANDBOX_MODE=permissive (docs/sandbox.md).
            sandbox_strict=settings.sandbox_strict(worker=True),
        )
        runtime = cls(generator, stopping)
        runtime.stop_on_sigterm()
        return runtime

    def stop_on_sigterm(self) -> None:
        """Wake this process's limiter waits on SIGTERM, then do what SIGTERM did before (a
        Celery pool process dies of it; its chunk is delivered again). Only from the main thread,
        where signal handlers are set; elsewhere a no-op."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum: int, frame: FrameType | None) -> None:
            self.stopping.set()
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.raise_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, handler)

    def process_chunk(self, job_id: int, chunk: int) -> ChunkReport:
        """The chunk, its permanent failures recorded (`services.generation.failures.run_chunk`)."""
        return run_chunk(self.generator, job_id, chunk)

    def close(self) -> None:
        self.stopping.set()  # threads waiting for the limiter give up instead of holding the close
        self.generator.close()
