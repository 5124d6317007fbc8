"""What one worker process holds: the engine, the shared rate limiter, and the `Generator`
(teacher clients, thread pool, sandbox) that runs chunks. Built after the fork, closed at exit."""

from __future__ import annotations

import logging

import redis

from db.engine import get_engine
from services.config import Settings
from services.generation.execute import ChunkReport, ClientFactory, Generator
from services.teachers.base import TeacherClient, TeacherRequest
from services.teachers.errors import TeacherCallError
from services.teachers.registry import build_client
from services.teachers.spec import TeacherSpec
from workers.ratelimit import RateLimiter, RateLimits

log = logging.getLogger(__name__)

# Pause every worker this long on a 429 that carries no Retry-After.
DEFAULT_BACK_OFF_S = 1.0
_CHARS_PER_TOKEN = 4


def estimated_tokens(request: TeacherRequest, spec: TeacherSpec) -> int:
    """Tokens a request counts against a tokens-per-minute limit before its usage is known: its
    prompt (about 4 characters a token) plus `max_tokens`, as providers themselves reserve."""
    prompt = request.prompt
    chars = len(prompt.system) + sum(len(str(m.get("content", ""))) for m in prompt.messages)
    return chars // _CHARS_PER_TOKEN + spec.options.max_tokens


def limited_client_factory(limiter: RateLimiter | None, database_url: str) -> ClientFactory:
    """A client factory whose clients take from the shared limiter before every attempt and
    make every worker back off when a provider answers 429."""

    def factory(spec: TeacherSpec) -> TeacherClient:
        limits = RateLimits(spec.options.rpm, spec.options.tpm)
        if limiter is None:
            return build_client(spec, database_url=database_url)

        def before_attempt(request: TeacherRequest) -> None:
            if not limits.unlimited:
                limiter.acquire(spec.provider, spec.model, limits, estimated_tokens(request, spec))

        def on_failure(error: TeacherCallError) -> None:
            if error.kind == "rate_limit":
                wait = error.retry_after_s or DEFAULT_BACK_OFF_S
                log.warning("%s answered 429: every worker pauses %.1f s", spec.label, wait)
                limiter.back_off(spec.provider, spec.model, wait)

        return build_client(
            spec, database_url=database_url, before_attempt=before_attempt, on_failure=on_failure
        )

    return factory


class WorkerRuntime:
    def __init__(self, generator: Generator) -> None:
        self.generator = generator

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerRuntime:
        url = settings.resolved_database_url
        limiter = None
        if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
            limiter = RateLimiter(redis.Redis.from_url(settings.broker_url))
        generator = Generator(
            get_engine(url, pool_size=settings.worker_threads + 4),
            limited_client_factory(limiter, url),
            threads=settings.worker_threads,
            sandbox_parallelism=settings.sandbox_workers,
        )
        return cls(generator)

    def process_chunk(self, job_id: int, chunk: int) -> ChunkReport:
        return self.generator.process_chunk(job_id, chunk)

    def close(self) -> None:
        self.generator.close()
