"""The batch wire formats: what the two providers' batch endpoints accept and answer.

OpenAI Batch: an uploaded JSONL input file (`{"custom_id", "method": "POST", "url":
"/v1/chat/completions", "body"}` per line) and a `Batch` object; results in an output file
(lines answered 200) and an error file (lines answered with an error, and lines never run:
`error.code` `batch_expired` / `batch_cancelled`). Anthropic Message Batches: `{"requests":
[{"custom_id", "params"}]}`, a `MessageBatch` object, and a results JSONL (`succeeded`,
`errored`, `canceled`, `expired`). Only what the official SDKs read is produced.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson

from services.teachers.simulator.batch_answers import LineAnswer
from services.teachers.simulator.batch_store import BatchRecord

OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_FILE_BYTES = 200 * 1024 * 1024
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256 * 1024 * 1024
COMPLETION_WINDOW_S = 24 * 3600
OPENAI_ENDPOINT = "/v1/chat/completions"
CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NOT_RUN = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}


class BatchRequestError(Exception):
    """A batch request the provider rejects as a whole (400, message for the client)."""


# --- OpenAI ----------------------------------------------------------------------------------------


def parse_openai_input(data: bytes, endpoint: str) -> tuple[list[tuple[str, Any]], list[dict[str, Any]]]:
    """The requests of an input file, and the validation errors that fail the batch (OpenAI
    validates the file after the batch is created, so a bad file is a `failed` batch)."""
    lines: list[tuple[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def fail(number: int, code: str, message: str, param: str | None = None) -> None:
        if len(errors) < 100:
            errors.append({"code": code, "line": number, "message": message, "param": param})

    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            fail(number, "invalid_json_line", "This line is not parseable as valid JSON.")
            continue
        if not isinstance(line, dict):
            fail(number, "invalid_json_line", "This line is not a JSON object.")
            continue
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            fail(number, "missing_required_parameter", "custom_id is required", "custom_id")
        elif custom_id in seen:
            fail(number, "duplicate_custom_id", "The custom_id for this request is a duplicate.", "custom_id")
        elif line.get("method") != "POST":
            fail(number, "invalid_method", "Only the POST method is supported.", "method")
        elif line.get("url") != endpoint:
            fail(number, "mismatched_url", f"The url must be {endpoint}, as the batch's endpoint.", "url")
        elif not isinstance(line.get("body"), dict):
            fail(number, "missing_required_parameter", "body must be a JSON object", "body")
        else:
            seen.add(custom_id)
            lines.append((custom_id, line["body"]))
    if not lines and not errors:
        fail(0, "empty_file", "The input file contains no requests.")
    if len(lines) > OPENAI_MAX_REQUESTS:
        fail(0, "too_many_requests", f"A batch holds at most {OPENAI_MAX_REQUESTS} requests.")
    return lines, errors


def openai_batch(record: BatchRecord, *, cancelling: bool = False) -> dict[str, Any]:
    """The `Batch` object. `cancelling`: the answer to the cancel call itself."""
    created = int(record.created)
    end, kind = record.end()
    outcome = record.outcome
    status = "in_progress"
    if record.errors:
        status = "failed"
    elif cancelling:
        status = "cancelling"
    elif outcome is not None:
        status = kind
    counts = {"total": record.count, "completed": 0, "failed": 0}
    if outcome is not None:
        counts = {"total": record.count, "completed": outcome["succeeded"], "failed": outcome["errored"]}
    ended_at = int(end) if outcome is not None else None
    return {
        "id": record.id,
        "object": "batch",
        "endpoint": record.endpoint,
        "errors": {"object": "list", "data": record.errors} if record.errors else None,
        "input_file_id": record.input_file_id,
        "completion_window": "24h",
        "status": status,
        "output_file_id": outcome.get("output_file_id") if outcome else None,
        "error_file_id": outcome.get("error_file_id") if outcome else None,
        "created_at": created,
        "in_progress_at": None if record.errors else created,
        "expires_at": created + COMPLETION_WINDOW_S,
        "finalizing_at": ended_at if kind == "completed" else None,
        "completed_at": ended_at if kind == "completed" else None,
        "failed_at": created if record.errors else None,
        "expired_at": ended_at if kind == "expired" else None,
        "cancelling_at": int(record.cancel_at) if record.cancel_at is not None else None,
        "cancelled_at": ended_at if kind == "cancelled" else None,
        "request_counts": counts,
        "metadata": record.metadata,
    }


def openai_result_line(line_id: str, custom_id: str, answer: LineAnswer) -> bytes:
    response = {"status_code": answer.status, "request_id": answer.request_id, "body": answer.body}
    return orjson.dumps({"id": line_id, "custom_id": custom_id, "response": response, "error": None})


def openai_not_run_line(line_id: str, custom_id: str, kind: str) -> bytes:
    code, message = _NOT_RUN[kind]
    error = {"code": code, "message": message}
    return orjson.dumps({"id": line_id, "custom_id": custom_id, "response": None, "error": error})


# --- Anthropic -------------------------------------------------------------------------------------


def parse_anthropic_requests(raw: bytes) -> list[tuple[str, Any]]:
    """The `(custom_id, params)` of a create request; BatchRequestError if it is rejected."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BatchRequestError("the request body is not valid JSON") from None
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        raise BatchRequestError("requests: a non-empty list is required")
    if len(requests) > ANTHROPIC_MAX_REQUESTS:
        raise BatchRequestError(f"requests: a batch holds at most {ANTHROPIC_MAX_REQUESTS} requests")
    out: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for i, request in enumerate(requests):
        if not isinstance(request, dict):
            raise BatchRequestError(f"requests.{i}: must be an object")
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str) or not CUSTOM_ID_RE.match(custom_id):
            raise BatchRequestError(
                f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            )
        if custom_id in seen:
            raise BatchRequestError(
                f"requests.{i}.custom_id: custom_id {custom_id!r} is not unique within the batch"
            )
        params = request.get("params")
        if not isinstance(params, dict):
            raise BatchRequestError(f"requests.{i}.params: Field required")
        seen.add(custom_id)
        out.append((custom_id, params))
    return out


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def anthropic_batch(record: BatchRecord, base_url: str) -> dict[str, Any]:
    """The `MessageBatch` object; `base_url` makes `results_url` absolute (as Anthropic's)."""
    outcome = record.outcome
    end, kind = record.end()
    counts = {"processing": record.count, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    status = "canceling" if record.cancel_at is not None else "in_progress"
    if outcome is not None:
        status = "ended"
        left = outcome["left"]
        counts = {
            "processing": 0,
            "succeeded": outcome["succeeded"],
            "errored": outcome["errored"],
            "canceled": left if kind == "cancelled" else 0,
            "expired": left if kind == "expired" else 0,
        }
    return {
        "id": record.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": counts,
        "ended_at": rfc3339(end) if outcome is not None else None,
        "created_at": rfc3339(record.created),
        "expires_at": rfc3339(record.created + COMPLETION_WINDOW_S),
        "archived_at": None,
        "cancel_initiated_at": rfc3339(record.cancel_at) if record.cancel_at is not None else None,
        "results_url": f"{base_url}/v1/messages/batches/{record.id}/results" if outcome is not None else None,
    }


def anthropic_result_line(custom_id: str, answer: LineAnswer | None, kind: str) -> bytes:
    """A results line: the answer's, or (`answer` None) the line never run (`kind` expired or
    cancelled)."""
    result: dict[str, Any]
    if answer is None:
        result = {"type": "canceled" if kind == "cancelled" else "expired"}
    elif answer.ok:
        result = {"type": "succeeded", "message": answer.body}
    else:
        result = {"type": "errored", "error": answer.body}
    return orjson.dumps({"custom_id": custom_id, "result": result})
