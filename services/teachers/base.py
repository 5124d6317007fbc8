"""`TeacherClient`: one abstract `complete(request)`; the base owns retries, timing and errors.

A subclass sends one HTTP request with its provider's official SDK (built with `max_retries=0`,
so retries and accounting are ours) and returns a `TeacherResponse`, or lets the SDK's
exception propagate. `call(request)` wraps it:

- each attempt is timed (`latency_ms` of the attempt that answered);
- a failure is classified by `errors.classify`: `rate_limit`, `server`, `timeout` and
  `connection` are retried up to `RetryPolicy.max_attempts` attempts in all, after a backoff of
  `backoff_s * 2**(n-1)` capped at `backoff_max_s` with full jitter in its upper half, or after
  the server's `Retry-After` when that is longer (a `Retry-After` above `retry_after_max_s` ends
  the call: waiting that long belongs to a scheduler, not to a worker thread);
- permanent errors (`bad_request`, `auth`, `refusal`, `bad_response`) end the call at once;
- an exception `classify` does not know (a bug) propagates unchanged and is never retried.

`before_attempt(request)`, when given, runs before every attempt, retries included: the hook
for a shared rate limiter (it may wait) or a budget check (it may raise to stop the call). A
`TeacherCallError` it raises ends the call with that error and nothing is sent (a limiter wait
that timed out: kind `rate_limit_wait`); any other exception propagates.
`on_failure(error)`, when given, runs after every failed attempt with the classified error (a
shared limiter pauses every worker on a 429's `Retry-After`), and `after_response(request,
response)` after every answered one (a limiter settles its token estimate with the usage).

The result is a `CallResult`, failures included: a failed call is data. Error messages and
stored bodies are scrubbed of the client's key. The key lives only in the SDK client object; it
is not an attribute of the spec and never enters a log record.
"""

from __future__ import annotations

import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from services.kpdd.prompts import RenderedPrompt
from services.kpdd.records import FinishReason
from services.teachers.errors import TeacherCallError, classify, redact, redact_json
from services.teachers.pricing import ModelPrice
from services.teachers.spec import TeacherSpec

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TeacherRequest:
    """One prompt to send. `sample_index` tells apart repeated samples of the same prompt (it is
    part of the request's fingerprint, not of what is sent)."""

    prompt: RenderedPrompt
    sample_index: int = 0


@dataclass(slots=True)
class TeacherResponse:
    """What a provider answered, normalised. `finish_reason` is one of stop/length/refusal/other;
    `raw` is the response body as JSON (no headers)."""

    text: str | None
    finish_reason: FinishReason
    tokens_in: int | None
    tokens_out: int | None
    raw: dict[str, Any]


@dataclass(slots=True)
class RetryPolicy:
    max_attempts: int = 6
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 300.0

    def backoff(self, failures: int, rng: random.Random) -> float:
        """The wait after the `failures`-th failed attempt: exponential, capped, jittered within
        [half, all] of the cap so concurrent workers spread out but never retry at once."""
        ceiling = min(self.backoff_max_s, self.backoff_s * 2 ** (failures - 1))
        return ceiling * (0.5 + 0.5 * rng.random())


@dataclass(slots=True)
class CallResult:
    """The outcome of `TeacherClient.call`: a response, or the last error. `waits_s` are the
    pauses taken between attempts (for reports and tests)."""

    response: TeacherResponse | None
    error: TeacherCallError | None
    attempts: int
    latency_ms: int | None
    waits_s: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.response is not None


class TeacherClient(ABC):
    """A teacher reached through one provider's SDK. Not thread-safe for `close`; `call` may be
    used from several threads (the SDK clients are)."""

    provider: ClassVar[str]
    # The provider family whose finish reasons and wire format the client speaks.
    wire: ClassVar[str]

    def __init__(
        self,
        spec: TeacherSpec,
        *,
        price: ModelPrice | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        before_attempt: Callable[[TeacherRequest], None] | None = None,
        on_failure: Callable[[TeacherCallError], None] | None = None,
        after_response: Callable[[TeacherRequest, TeacherResponse], None] | None = None,
    ) -> None:
        self.spec = spec
        self.price = price
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._before_attempt = before_attempt
        self._on_failure = on_failure
        self._after_response = after_response
        self._secrets: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.spec.label

    def generation_options(self) -> dict[str, Any]:
        """The options sent with every request (and hashed into its fingerprint)."""
        return self.spec.options.generation()

    @abstractmethod
    def complete(self, request: TeacherRequest) -> TeacherResponse:
        """Send one request and return the normalised response. Raise the SDK's exception (or a
        `TeacherCallError`) on failure; never retry here."""

    def call(self, request: TeacherRequest) -> CallResult:
        """`complete` with timing, classification and bounded retries (see the module doc)."""
        waits: list[float] = []
        attempt = 0
        while True:
            attempt += 1
            if self._before_attempt is not None:
                try:
                    self._before_attempt(request)  # e.g. take a rate-limit token; may wait or raise
                except TeacherCallError as refused:  # nothing was sent for this attempt
                    log.info("%s: %s before attempt %d", self.label, refused.kind, attempt)
                    return CallResult(None, self._scrubbed(refused), attempt - 1, None, waits)
            started = time.perf_counter()
            try:
                response = self.complete(request)
            except Exception as exc:
                error = classify(exc)
                if error is None:
                    raise  # not a teacher error: a bug, never retried
                error = self._scrubbed(error)
                if self._on_failure is not None:
                    self._on_failure(error)  # e.g. make every worker back off on a 429
                latency = _ms_since(started)
                wait = self._wait_before_retry(error, attempt)
                if wait is None:
                    log.info("%s: %s after %d attempt(s), giving up", self.label, error.kind, attempt)
                    return CallResult(None, error, attempt, latency, waits)
                log.info("%s: %s on attempt %d, retrying in %.2f s", self.label, error.kind, attempt, wait)
                waits.append(wait)
                self._sleep(wait)
                continue
            response.raw = redact_json(response.raw, self._secrets)
            if self._after_response is not None:
                self._after_response(request, response)  # e.g. settle a rate-limit estimate
            return CallResult(response, None, attempt, _ms_since(started), waits)

    def _wait_before_retry(self, error: TeacherCallError, attempt: int) -> float | None:
        if not error.retryable or attempt >= self.retry.max_attempts:
            return None
        wait = self.retry.backoff(attempt, self._rng)
        if error.retry_after_s is not None:
            if error.retry_after_s > self.retry.retry_after_max_s:
                error.message += (
                    f" (Retry-After {error.retry_after_s:.0f} s is over the "
                    f"{self.retry.retry_after_max_s:.0f} s allowed by KPDD_TEACHER_RETRY_AFTER_MAX_S)"
                )
                return None
            wait = max(wait, error.retry_after_s)
        return wait

    def _scrubbed(self, error: TeacherCallError) -> TeacherCallError:
        error.message = redact(error.message, self._secrets)
        error.body = redact_json(error.body, self._secrets)
        return error

    def _keep_secret(self, secret: str | None) -> None:
        """Register a key so that messages and stored bodies are scrubbed of it."""
        if secret:
            self._secrets = (*self._secrets, secret)

    def close(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Release connections (and anything else the client started)."""

    def __enter__(self) -> TeacherClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never shows the key: only the spec's public parts
        return f"{type(self).__name__}({self.spec.to_text()!r})"


def _ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


__all__ = ["CallResult", "RetryPolicy", "TeacherClient", "TeacherRequest", "TeacherResponse"]
