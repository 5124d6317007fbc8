"""What went wrong with a teacher call, classified by what to do next.

`classify(exc)` maps the exceptions of the `openai` and `anthropic` SDKs (and of httpx under
them) to a `TeacherCallError` with a `kind`:

- retryable: `rate_limit` (429; its `Retry-After` is honoured), `server` (5xx, Anthropic's 529
  `overloaded`), `timeout`, `connection`;
- permanent: `bad_request` (400, 404, 409, 413, 422 and other 4xx), `auth` (401, 403),
  `refusal` (a 400 that the provider says is a content-policy refusal), `bad_response` (a 2xx
  whose body the SDK could not read).

Two kinds come only from provider batches (`batches`): `expired` (the request was not run
before its batch expired) and `cancelled` (its batch was cancelled first); both are retryable
(in another batch). `classify_status` classifies a status and error body that arrived without an
exception (a batch's error line) exactly as `classify` would the same HTTP answer.

Three more kinds end a call before anything is sent, raised by a `before_attempt` hook (the
worker's rate limiter, `workers.runtime`): `rate_limit_wait` (no capacity within
`KPDD_RATE_LIMIT_WAIT_MAX_S`), `job_stopped` (the call's job ended while it waited),
`worker_stopping` (the worker is shutting down). None is retried by the client.

Anything else is not a teacher error (it is a bug): `classify` returns None and the caller lets
it propagate, so nothing retries a bare exception. Messages never carry request headers; the
caller scrubs them of the key as well (`redact`), since some servers echo part of it.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any, Literal

import anthropic
import httpx
import openai

ErrorKind = Literal[
    "rate_limit",
    "server",
    "timeout",
    "connection",
    "bad_request",
    "auth",
    "refusal",
    "bad_response",
    # A batch request never run: its batch expired, or was cancelled, first (see `batches`).
    "expired",
    "cancelled",
    # Raised before an attempt, nothing sent: the shared rate limiter had no capacity within
    # KPDD_RATE_LIMIT_WAIT_MAX_S; the job of the call ended while it waited; the worker is
    # shutting down.
    "rate_limit_wait",
    "job_stopped",
    "worker_stopping",
]
RETRYABLE_KINDS: frozenset[str] = frozenset(
    {"rate_limit", "server", "timeout", "connection", "expired", "cancelled"}
)
MAX_MESSAGE_CHARS = 500


class TeacherCallError(Exception):
    """One failed attempt. `retry_after_s` is the server's `Retry-After`, when it sent one;
    `body` the error body it sent (JSON), kept with the call record."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(kind, message, status_code, retry_after_s, body)
        self.kind: ErrorKind = kind
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.body = body

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS

    def __str__(self) -> str:
        status = f" (HTTP {self.status_code})" if self.status_code else ""
        return f"{self.kind}{status}: {self.message}"


_SDK_ERRORS: tuple[type[BaseException], ...] = (openai.OpenAIError, anthropic.AnthropicError, httpx.HTTPError)
_REFUSAL_CODES = frozenset({"content_policy_violation", "content_filter", "invalid_prompt"})


def classify(exc: BaseException) -> TeacherCallError | None:
    """The classified error for an SDK or transport exception; None for anything else."""
    if isinstance(exc, TeacherCallError):
        return exc
    if not isinstance(exc, _SDK_ERRORS):
        return None
    message = _short(str(exc))
    # Timeouts first: both SDKs' timeout errors subclass their connection errors.
    if isinstance(exc, (openai.APITimeoutError, anthropic.APITimeoutError, httpx.TimeoutException)):
        return TeacherCallError("timeout", message or "the request timed out")
    if isinstance(exc, (openai.APIConnectionError, anthropic.APIConnectionError, httpx.TransportError)):
        return TeacherCallError("connection", message or "could not connect")
    if isinstance(exc, (openai.APIResponseValidationError, anthropic.APIResponseValidationError)):
        return TeacherCallError("bad_response", message, getattr(exc, "status_code", None))
    if isinstance(exc, (openai.APIStatusError, anthropic.APIStatusError)):
        return _from_status(exc.status_code, message, exc.response.headers, exc.body)
    if isinstance(exc, httpx.HTTPStatusError):
        return _from_status(exc.response.status_code, message, exc.response.headers, None)
    # Other SDK errors are raised before anything is sent (missing key, bad client settings).
    return TeacherCallError("bad_request", message)


def classify_status(
    status: int, message: str, body: Any = None, headers: httpx.Headers | dict[str, str] | None = None
) -> TeacherCallError:
    """The classified error for an HTTP status and error body received as data (a batch's
    per-request error): 429 and 5xx retryable, 401/403 auth, other 4xx bad_request or refusal."""
    return _from_status(status, _short(message), httpx.Headers(headers or {}), body)


def _from_status(status: int, message: str, headers: httpx.Headers, body: Any) -> TeacherCallError:
    if status == 429:
        return TeacherCallError("rate_limit", message, status, retry_after(headers), body)
    if status >= 500:
        return TeacherCallError("server", message, status, retry_after(headers), body)
    if status in (401, 403):
        return TeacherCallError("auth", message, status, None, body)
    if status == 408:
        return TeacherCallError("timeout", message, status, retry_after(headers), body)
    if _error_code(body) in _REFUSAL_CODES:
        return TeacherCallError("refusal", message, status, None, body)
    return TeacherCallError("bad_request", message, status, None, body)


def _error_code(body: Any) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            code = inner.get("code") or inner.get("type")
            return str(code) if code is not None else None
    return None


def retry_after(headers: httpx.Headers | dict[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` (seconds or an HTTP date); None
    when absent or unreadable. Never negative."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every secret, and any 16-character start or end of one, replaced by
    `[redacted]` (servers that echo a key often echo it masked in the middle)."""
    for secret in secrets:
        if not secret:
            continue
        text = text.replace(secret, "[redacted]")
        if len(secret) >= 24:
            text = text.replace(secret[:16], "[redacted]").replace(secret[-16:], "[redacted]")
    return text


def redact_json(value: Any, secrets: tuple[str, ...]) -> Any:
    """A copy of a JSON value with `redact` applied to every string in it (keys included)."""
    if not any(secrets):
        return value
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {redact(str(k), secrets): redact_json(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_json(v, secrets) for v in value]
    return value


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


__all__ = [
    "RETRYABLE_KINDS",
    "ErrorKind",
    "TeacherCallError",
    "classify",
    "classify_status",
    "redact",
    "redact_json",
    "retry_after",
]
