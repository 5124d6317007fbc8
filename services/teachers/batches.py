"""Provider batch APIs through the official SDKs: OpenAI Batch and Anthropic Message Batches.

`batch_api(client)` returns the adapter for a teacher client's wire format (`openai` for OpenAI,
OpenAI-compatible servers and `sim:`; `anthropic`). The adapter reuses the client's own SDK
object (its key, base URL and timeout) and its `response_from_body`, so an answer read from a
batch is normalised exactly as the synchronous call's answer would be.

- `submit(lines, tag)`: one provider batch of `BatchLine`s (custom_id = the request's
  fingerprint, body = `client.request_kwargs(request)`). OpenAI: a JSONL file uploaded with
  `purpose=batch` as `kpdd-<tag>.jsonl`, then a batch on `/v1/chat/completions` with metadata
  `{"kpdd_batch": tag}`. Anthropic: `messages.batches.create`. ValueError past `limits`.
- `find(tag, created_after, count)`: the batch a crashed submitter created but did not record
  (see each adapter for how it is recognised).
- `retrieve`, `cancel`: a `ProviderBatch` with a normalised status.
- `results(batch_id)`: one `BatchResult` per request of an ended batch: `succeeded` with a
  `TeacherResponse`, or `errored` / `expired` / `cancelled` with a `TeacherCallError`
  (retryable for 429, 5xx, expired and cancelled; not for other 4xx).

SDK exceptions become `TeacherCallError`s (`errors.classify`), scrubbed of the client's key, as
are messages and the raw result lines handed back. Nothing here retries or sleeps: polling and
resubmission belong to the caller.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import orjson

from services.teachers.base import TeacherClient, TeacherResponse
from services.teachers.errors import TeacherCallError, classify, classify_status, redact, redact_json

OPENAI_BATCH_ENDPOINT = "/v1/chat/completions"
TAG_METADATA_KEY = "kpdd_batch"
ENDED_STATUSES = frozenset({"ended", "expired", "cancelled"})
T = TypeVar("T")
_END = object()


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_requests: int
    max_bytes: int


@dataclass(slots=True)
class BatchLine:
    custom_id: str  # the request's fingerprint (64 hex characters)
    body: dict[str, Any]  # client.request_kwargs(request): model, messages/system, options


@dataclass(slots=True)
class ProviderBatch:
    """A provider batch as last seen. `status` is normalised: in_progress | cancelling | ended |
    expired | cancelled | failed; `raw_status` is the provider's word."""

    id: str
    status: str
    raw_status: str
    total: int
    done: int  # requests finished (succeeded + errored), as the provider counts them
    failed: int
    message: str | None = None  # why the batch failed as a whole (OpenAI `errors`), redacted

    @property
    def ended(self) -> bool:
        """Whether results can be fetched (ended, expired, cancelled; a failed batch has none)."""
        return self.status in ENDED_STATUSES


@dataclass(slots=True)
class BatchResult:
    custom_id: str
    outcome: str  # succeeded | errored | expired | cancelled
    response: TeacherResponse | None  # for succeeded
    error: TeacherCallError | None  # for the others
    raw: dict[str, Any]  # the result line as received, redacted of the key


class BatchAPI(ABC):
    """One provider's batch API, driven through a teacher client's SDK object."""

    limits: ClassVar[BatchLimits]

    def __init__(self, client: TeacherClient) -> None:
        sdk = getattr(client, "_sdk", None)
        read_body = getattr(client, "response_from_body", None)
        if sdk is None or read_body is None:
            raise TypeError(f"{type(client).__name__} has no SDK client to send batches with")
        self.client = client
        self._sdk: Any = sdk
        self._response_from_body: Callable[[dict[str, Any]], TeacherResponse] = read_body

    @abstractmethod
    def _encoded(self, line: BatchLine) -> bytes:
        """The line as it is sent (without separators)."""

    def line_bytes(self, line: BatchLine) -> int:
        """Bytes the line takes in the upload (its JSON and one separator)."""
        return len(self._encoded(line)) + 1

    def check_limits(self, lines: Sequence[BatchLine]) -> None:
        """ValueError unless `lines` fit in one batch."""
        if not lines:
            raise ValueError("a batch needs at least one request")
        if len(lines) > self.limits.max_requests:
            raise ValueError(
                f"{len(lines)} requests exceed the {self.limits.max_requests} of one batch; split them"
            )
        size = sum(self.line_bytes(line) for line in lines)
        if size > self.limits.max_bytes:
            raise ValueError(f"{size} bytes exceed the {self.limits.max_bytes} of one batch; split them")

    @abstractmethod
    def submit(self, lines: Sequence[BatchLine], tag: str) -> str:
        """Create one provider batch of `lines`; returns its id."""

    @abstractmethod
    def find(self, tag: str, created_after: float, count: int) -> str | None:
        """The id of a batch submitted with `tag` at or after `created_after` (unix seconds) and
        holding `count` requests, if the provider has one."""

    @abstractmethod
    def retrieve(self, batch_id: str) -> ProviderBatch: ...

    @abstractmethod
    def results(self, batch_id: str) -> Iterator[BatchResult]:
        """Every request of an ended batch, in no particular order."""

    @abstractmethod
    def cancel(self, batch_id: str) -> ProviderBatch: ...

    # --- shared machinery --------------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` with SDK and transport exceptions raised as scrubbed
        TeacherCallErrors; anything else (a bug) propagates unchanged. The error is raised
        outside the handler, so it does not chain the SDK's exception (whose text may hold what
        a server echoed of the key)."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            error = classify(exc)
            if error is None:
                raise
        raise self._scrubbed(error)

    def _each(self, iterable: Any) -> Iterator[Any]:
        """The items of an SDK iterator (pages fetched on the way), errors as in `_call`."""
        iterator = self._call(iter, iterable)
        while True:
            item = self._call(next, iterator, _END)
            if item is _END:
                return
            yield item

    def _scrubbed(self, error: TeacherCallError) -> TeacherCallError:
        """The error scrubbed of the key: message and body (the client's), and its `args` too
        (which `repr` and pickling show)."""
        error = self.client._scrubbed(error)
        error.args = (error.kind, error.message, error.status_code, error.retry_after_s, error.body)
        return error

    def _redacted(self, value: Any) -> Any:
        return redact_json(value, self.client._secrets)

    def _succeeded(self, custom_id: str, body: Any, raw: dict[str, Any]) -> BatchResult:
        try:
            response = self._response_from_body(body)
        except TeacherCallError as exc:
            return BatchResult(custom_id, "errored", None, self._scrubbed(exc), raw)
        response.raw = self._redacted(response.raw)
        return BatchResult(custom_id, "succeeded", response, None, raw)

    def _failed(
        self, custom_id: str, outcome: str, error: TeacherCallError, raw: dict[str, Any]
    ) -> BatchResult:
        return BatchResult(custom_id, outcome, None, self._scrubbed(error), raw)


def _not_run(outcome: str) -> TeacherCallError:
    if outcome == "expired":
        return TeacherCallError("expired", "the request was not run before its batch expired")
    return TeacherCallError("cancelled", "the request was not run: its batch was cancelled")


# --- OpenAI ------------------------------------------------------------------------------------------

_OPENAI_STATUS = {
    "validating": "in_progress",
    "in_progress": "in_progress",
    "finalizing": "in_progress",
    "cancelling": "cancelling",
    "completed": "ended",
    "expired": "expired",
    "cancelled": "cancelled",
    "failed": "failed",
}
_OPENAI_NOT_RUN = {"batch_expired": "expired", "batch_cancelled": "cancelled"}
LIST_PAGE = 100


class OpenAIBatchAPI(BatchAPI):
    """The OpenAI Batch API (also OpenAI-compatible servers that serve it, and the simulator).

    `find` lists batches newest first and stops at the first created before `created_after`
    (whole seconds: OpenAI's `created_at`); the batch is the one whose metadata `kpdd_batch` is
    the tag. Each line's JSON takes at most 200 MB in all (the file limit)."""

    limits: ClassVar[BatchLimits] = BatchLimits(max_requests=50_000, max_bytes=200 * 1024 * 1024)

    def _encoded(self, line: BatchLine) -> bytes:
        return orjson.dumps(
            {"custom_id": line.custom_id, "method": "POST", "url": OPENAI_BATCH_ENDPOINT, "body": line.body}
        )

    def submit(self, lines: Sequence[BatchLine], tag: str) -> str:
        self.check_limits(lines)
        data = b"".join(self._encoded(line) + b"\n" for line in lines)
        uploaded = self._call(
            self._sdk.files.create, file=(f"kpdd-{tag}.jsonl", data, "application/jsonl"), purpose="batch"
        )
        batch = self._call(
            self._sdk.batches.create,
            input_file_id=uploaded.id,
            endpoint=OPENAI_BATCH_ENDPOINT,
            completion_window="24h",
            metadata={TAG_METADATA_KEY: tag},
        )
        return str(batch.id)

    def find(self, tag: str, created_after: float, count: int) -> str | None:
        oldest = math.floor(created_after)
        for batch in self._each(self._call(self._sdk.batches.list, limit=LIST_PAGE)):  # newest first
            if batch.created_at < oldest:
                return None
            if (batch.metadata or {}).get(TAG_METADATA_KEY) == tag:
                return str(batch.id)
        return None

    def retrieve(self, batch_id: str) -> ProviderBatch:
        return self._batch(self._call(self._sdk.batches.retrieve, batch_id))

    def cancel(self, batch_id: str) -> ProviderBatch:
        return self._batch(self._call(self._sdk.batches.cancel, batch_id))

    def _batch(self, batch: Any) -> ProviderBatch:
        counts = batch.request_counts
        total, completed, failed = (counts.total, counts.completed, counts.failed) if counts else (0, 0, 0)
        message = None
        errors = batch.errors.data if batch.errors and batch.errors.data else []
        if errors:
            parts = [f"line {e.line}: {e.message}" if e.line else str(e.message) for e in errors[:5]]
            message = redact("; ".join(parts), self.client._secrets)
        status = _OPENAI_STATUS.get(batch.status, "in_progress")
        return ProviderBatch(batch.id, status, batch.status, total, completed + failed, failed, message)

    def results(self, batch_id: str) -> Iterator[BatchResult]:
        batch = self._call(self._sdk.batches.retrieve, batch_id)
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            data = self._call(lambda file_id=file_id: self._sdk.files.content(file_id).read())
            for raw_line in data.splitlines():
                if raw_line.strip():
                    yield self._result(orjson.loads(raw_line))

    def _result(self, line: Any) -> BatchResult:
        raw = self._redacted(line) if isinstance(line, dict) else {"line": line}
        custom_id = str(raw.get("custom_id", ""))
        error = raw.get("error")
        response = raw.get("response")
        if isinstance(error, dict):
            code = str(error.get("code") or "")
            message = str(error.get("message") or code or "the request failed")
            outcome = _OPENAI_NOT_RUN.get(code)
            if outcome is not None:
                return self._failed(custom_id, outcome, _not_run(outcome), raw)
            return self._failed(custom_id, "errored", TeacherCallError("server", message, body=error), raw)
        if not isinstance(response, dict):
            bad = TeacherCallError("bad_response", "the result line has neither a response nor an error")
            return self._failed(custom_id, "errored", bad, raw)
        status = int(response.get("status_code") or 0)
        body = response.get("body")
        if status >= 400:
            inner = body.get("error") if isinstance(body, dict) else None
            message = str(inner.get("message")) if isinstance(inner, dict) else f"HTTP {status}"
            return self._failed(custom_id, "errored", classify_status(status, message, body), raw)
        return self._succeeded(custom_id, body, raw)


# --- Anthropic ---------------------------------------------------------------------------------------


class AnthropicBatchAPI(BatchAPI):
    """Anthropic Message Batches.

    `find`: Anthropic batches carry no metadata, so the batch is recognised by time and size:
    the newest batch created at or after `created_after` whose request count is `count`. Two
    batches of the same size submitted by this key in that window cannot be told apart; the
    caller passes the time it started submitting and the exact count to keep the window small.
    Lines take at most 256 MB in all (the request limit)."""

    limits: ClassVar[BatchLimits] = BatchLimits(max_requests=100_000, max_bytes=256 * 1024 * 1024)

    def _encoded(self, line: BatchLine) -> bytes:
        return orjson.dumps({"custom_id": line.custom_id, "params": line.body})

    def submit(self, lines: Sequence[BatchLine], tag: str) -> str:
        self.check_limits(lines)
        requests = [{"custom_id": line.custom_id, "params": line.body} for line in lines]
        batch = self._call(self._sdk.messages.batches.create, requests=requests)
        return str(batch.id)

    def find(self, tag: str, created_after: float, count: int) -> str | None:
        for batch in self._each(self._call(self._sdk.messages.batches.list, limit=LIST_PAGE)):
            if batch.created_at.timestamp() < created_after:  # newest first: none older matches
                return None
            if self._total(batch) == count:
                return str(batch.id)
        return None

    def retrieve(self, batch_id: str) -> ProviderBatch:
        return self._batch(self._call(self._sdk.messages.batches.retrieve, batch_id))

    def cancel(self, batch_id: str) -> ProviderBatch:
        return self._batch(self._call(self._sdk.messages.batches.cancel, batch_id))

    @staticmethod
    def _total(batch: Any) -> int:
        c = batch.request_counts
        return int(c.processing + c.succeeded + c.errored + c.canceled + c.expired)

    def _batch(self, batch: Any) -> ProviderBatch:
        c = batch.request_counts
        raw_status = str(batch.processing_status)
        status = {"in_progress": "in_progress", "canceling": "cancelling"}.get(raw_status, "ended")
        if status == "ended" and batch.cancel_initiated_at is not None:
            status = "cancelled"
        elif status == "ended" and c.expired:
            status = "expired"
        done = int(c.succeeded + c.errored)
        return ProviderBatch(batch.id, status, raw_status, self._total(batch), done, int(c.errored))

    def results(self, batch_id: str) -> Iterator[BatchResult]:
        decoder = self._call(self._sdk.messages.batches.results, batch_id)
        try:
            for item in self._each(decoder):
                yield self._result(item.to_dict())
        finally:
            decoder.close()

    def _result(self, line: dict[str, Any]) -> BatchResult:
        raw = self._redacted(line)
        custom_id = str(raw.get("custom_id", ""))
        result = raw.get("result") if isinstance(raw.get("result"), dict) else {}
        kind = result.get("type")
        if kind == "succeeded":
            return self._succeeded(custom_id, result.get("message"), raw)
        if kind in ("expired", "canceled"):
            outcome = "expired" if kind == "expired" else "cancelled"
            return self._failed(custom_id, outcome, _not_run(outcome), raw)
        body = result.get("error")
        inner = body.get("error") if isinstance(body, dict) else None
        error_type = str(inner.get("type")) if isinstance(inner, dict) else "api_error"
        message = str(inner.get("message")) if isinstance(inner, dict) else f"errored: {error_type}"
        status = _ANTHROPIC_ERROR_STATUS.get(error_type, 500)
        return self._failed(custom_id, "errored", classify_status(status, message, body), raw)


# Anthropic names errors by type; the HTTP status each type is sent with.
_ANTHROPIC_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

APIS: dict[str, type[BatchAPI]] = {"openai": OpenAIBatchAPI, "anthropic": AnthropicBatchAPI}


def batch_api(client: TeacherClient) -> BatchAPI:
    """The batch adapter for `client`'s wire format (ValueError for a wire without one)."""
    api = APIS.get(client.wire)
    if api is None:
        raise ValueError(f"{client.label}: no batch API for the {client.wire!r} wire format")
    return api(client)


__all__ = [
    "APIS",
    "AnthropicBatchAPI",
    "BatchAPI",
    "BatchLimits",
    "BatchLine",
    "BatchResult",
    "OpenAIBatchAPI",
    "ProviderBatch",
    "batch_api",
]
