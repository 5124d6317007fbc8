"""Cached, recorded teacher calls: the fingerprint of a request, cache replay, the ledger row.

`request_fingerprint` is the sha256 of the normalised request: provider, model, the rendered
system text and turns, the generation options and the sample index, as canonical JSON. The base
URL is not part of it (the same model behind another host or proxy is the same teacher), nor is
the key or anything about the caller.

`cached_call(engine, client, request)` looks the fingerprint up in `teacher_calls`; a stored
paid response (`ok` or `refused`) is replayed and nothing is sent. Otherwise the client is
called (with its retries) and the outcome, success or failure, is upserted on the fingerprint in
its own short transaction (no transaction stays open across the HTTP call). Re-running the same
work, or changing the parser or the validator, therefore pays nothing: only the text and the
finish reason are needed to parse again, and both are stored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Engine

from db.queries.teachers import NewTeacherCall, StoredCall, find_replayable_call, record_call
from services.kpdd.prompts import RenderedPrompt
from services.kpdd.records import FinishReason, Stage
from services.teachers.base import CallResult, TeacherClient, TeacherRequest
from services.teachers.pricing import usd_text

FINGERPRINT_VERSION = 1


def request_fingerprint(
    provider: str, model: str, prompt: RenderedPrompt, options: dict[str, Any], sample_index: int
) -> str:
    """sha256 hex of the normalised request (see the module doc)."""
    payload = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "provider": provider,
        "model": model,
        "system": prompt.system,
        "messages": prompt.messages,
        "options": options,
        "sample_index": sample_index,
    }
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def fingerprint_of(client: TeacherClient, request: TeacherRequest) -> str:
    return request_fingerprint(
        client.provider, client.spec.model, request.prompt, client.generation_options(), request.sample_index
    )


@dataclass(slots=True)
class CallRecord:
    """One stage's call as the caller sees it: replayed from the cache (`cached`) or made now.

    `status` is `ok`, `refused` or `failed`; `cost_usd` is what this call cost now (None when
    the model has no price; 0 for a replay), `stored_cost_usd` what the stored response cost
    when it was paid for. `latency_ms` is the answering attempt's (the original one's for a
    replay)."""

    call_id: int
    fingerprint: str
    stage: Stage
    status: str
    cached: bool
    text: str | None
    finish_reason: FinishReason | None
    tokens_in: int | None
    tokens_out: int | None
    cost_usd: Decimal | None
    stored_cost_usd: Decimal | None
    latency_ms: int | None
    attempts: int
    error_kind: str | None = None
    error_message: str | None = None
    retryable: bool = False

    @property
    def paid(self) -> bool:
        """True when this call was sent now and answered (a replay or a failure is not paid)."""
        return not self.cached and self.status != "failed"

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "stage": self.stage,
            "status": self.status,
            "cached": self.cached,
            "finish_reason": self.finish_reason,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": usd_text(self.cost_usd),
            "latency_ms": self.latency_ms,
            "attempts": self.attempts,
            "error_kind": self.error_kind,
            "error_message": self.error_message,
        }


def cached_call(
    engine: Engine, client: TeacherClient, request: TeacherRequest, *, problem_id: int | None = None
) -> CallRecord:
    """Replay the stored response for `request`, or call the teacher and record the outcome.

    Idempotent: calling it again for the same request replays, and a redelivered task never adds
    a row. Exceptions that are not teacher errors (bugs, a database failure) propagate."""
    fingerprint = fingerprint_of(client, request)
    # Plain connections, not ORM sessions: this runs around every teacher call.
    with engine.connect() as conn:
        stored = find_replayable_call(conn, fingerprint)
    if stored is not None:
        return _replayed(stored, request.prompt.stage)
    result = client.call(request)
    row = _row(client, request, fingerprint, result, problem_id)
    with engine.begin() as conn:
        call_id, _written = record_call(conn, row)
    return CallRecord(
        call_id=call_id,
        fingerprint=fingerprint,
        stage=request.prompt.stage,
        status=row.status,
        cached=False,
        text=row.response_text,
        finish_reason=result.response.finish_reason if result.response else None,
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        cost_usd=row.cost_usd,
        stored_cost_usd=row.cost_usd,
        latency_ms=row.latency_ms,
        attempts=result.attempts,
        error_kind=row.error_kind,
        error_message=row.error_message,
        retryable=result.error.retryable if result.error else False,
    )


def _row(
    client: TeacherClient,
    request: TeacherRequest,
    fingerprint: str,
    result: CallResult,
    problem_id: int | None,
) -> NewTeacherCall:
    prompt = request.prompt
    row = NewTeacherCall(
        fingerprint=fingerprint,
        provider=client.provider,
        model=client.spec.model,
        mode=prompt.mode,
        stage_mode=prompt.stage_mode,
        stage=prompt.stage,
        prompt_version=prompt.version,
        status="failed",
        options=client.generation_options(),
        problem_id=problem_id,
        sample_index=request.sample_index,
        latency_ms=result.latency_ms,
        attempts=result.attempts,
    )
    response, error = result.response, result.error
    if response is not None:
        refused = response.finish_reason == "refusal"
        row.status = "refused" if refused else "ok"
        row.error_kind = "refusal" if refused else None
        row.finish_reason = response.finish_reason
        row.response_text = response.text
        row.tokens_in = response.tokens_in
        row.tokens_out = response.tokens_out
        row.response = response.raw
        if client.price is not None and response.tokens_in is not None and response.tokens_out is not None:
            row.cost_usd = client.price.cost(response.tokens_in, response.tokens_out)
    elif error is not None:
        row.error_kind = error.kind
        row.error_message = error.message
        row.http_status = error.status_code
        if error.body is not None:
            row.response = error.body if isinstance(error.body, dict) else {"body": error.body}
    return row


def _replayed(stored: StoredCall, stage: Stage) -> CallRecord:
    finish: Any = stored.finish_reason
    return CallRecord(
        call_id=stored.id,
        fingerprint=stored.fingerprint,
        stage=stage,
        status=stored.status,
        cached=True,
        text=stored.response_text,
        finish_reason=finish,
        tokens_in=stored.tokens_in,
        tokens_out=stored.tokens_out,
        cost_usd=Decimal(0),
        stored_cost_usd=stored.cost_usd,
        latency_ms=stored.latency_ms,
        attempts=0,
        error_kind=stored.error_kind,
    )


__all__ = ["FINGERPRINT_VERSION", "CallRecord", "cached_call", "fingerprint_of", "request_fingerprint"]
