"""Teacher requests sent through a provider's batch API instead of one HTTP call each.

A teacher with `batch=true` (or every teacher of `kpdd generate --transport batch`) is asked
exactly as an online one (`calls.cached_call`): the response cache is looked up first and a
stored answer is replayed. Only a request the cache cannot answer takes another way: inside a
generation chunk (`BatchScope`, set by `services.generation.execute`) it is queued as a
`batch_requests` row (its body as the SDK would send it, what its ledger row will say, its
expected cost at batch prices) and the call returns the record of a request *waiting* for its
batch (`error_kind` `BATCHED`). The chunk leaves that problem pending and waits
(`job_chunks.batch_wait`); the batch poller (`services.generation.batches`) sends the queued
requests as provider batches, writes each answer into the ledger and cache (at batch prices),
and queues the chunk again, whose second run replays the answers and goes on: parsing,
validation, rationales, budgets, the next stage of a staged prompt or the next sample of
`--until-valid` (which is queued for the next batch: rounds).

A queued request is queued once per job (unique job and fingerprint): a redelivered chunk finds
it queued or sent and waits with it. A request whose batch answered with a permanent error, or
that ran out of submissions, is `failed`: the call returns that failure, as an online call would.
Outside a chunk (`kpdd probe`, ...) a batch teacher is called online.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from db.nul import escape_nul_json
from db.queries.batches import queue_request
from db.queries.teachers import find_replayable_call
from services.teachers.base import TeacherClient, TeacherRequest
from services.teachers.tokens import expected_cost

if TYPE_CHECKING:
    from services.teachers.calls import CallRecord

BATCHED = "batched"  # the error kind of a request waiting for its batch
BATCH_BUDGET = "batch_budget"  # the error kind of a request its job's budget could not send


@dataclass(slots=True, frozen=True)
class BatchScope:
    """The chunk a batch request belongs to (its answer queues that chunk again)."""

    job_id: int
    chunk: int


BATCH_SCOPE: ContextVar[BatchScope | None] = ContextVar("kpdd_batch_scope", default=None)


def batched(client: TeacherClient) -> bool:
    """Whether `client`'s calls go through a batch here (a batch teacher inside a chunk)."""
    return client.spec.options.batch and BATCH_SCOPE.get() is not None


def request_body(client: TeacherClient, request: TeacherRequest) -> dict[str, Any]:
    """The body the provider's batch line carries: what the online call would send."""
    kwargs = getattr(client, "request_kwargs", None)
    if kwargs is None:
        raise TypeError(f"{type(client).__name__} cannot build a batch request")
    body: dict[str, Any] = kwargs(request)
    return body


def defer_to_batch(
    engine: Engine,
    client: TeacherClient,
    request: TeacherRequest,
    fingerprint: str,
    intent: dict[str, Any],
    problem_id: int | None,
) -> CallRecord:
    """Queue the request for a batch of the current chunk's job, or report on it (module doc)."""
    from services.teachers.calls import CallRecord, replayed

    scope = BATCH_SCOPE.get()
    assert scope is not None, "defer_to_batch runs inside a chunk (BATCH_SCOPE)"
    values = {
        "job_id": scope.job_id,
        "chunk": scope.chunk,
        "problem_id": problem_id,
        "teacher": client.spec.to_text(),
        "fingerprint": fingerprint,
        "body": escape_nul_json(request_body(client, request)),
        "intent": intent,
        "estimate_usd": expected_cost(engine, client, request.prompt, batch=True),
    }
    with engine.begin() as conn:  # a plain connection: this runs for every request of a batch job
        state = queue_request(conn, values)
        stored = find_replayable_call(conn, fingerprint) if state.state == "done" else None
    if stored is not None:  # answered by the batch (a refresh run lands here too)
        return replayed(stored, request.prompt.stage)
    waiting = state.state != "failed"
    return CallRecord(
        call_id=0,
        fingerprint=fingerprint,
        stage=request.prompt.stage,
        status="failed",
        cached=False,
        text=None,
        finish_reason=None,
        tokens_in=None,
        tokens_out=None,
        cost_usd=Decimal(0),
        stored_cost_usd=None,
        latency_ms=None,
        attempts=0,
        error_kind=BATCHED if waiting else (state.error_kind or "batch_failed"),
        error_message=(
            f"waiting for a batch of job {scope.job_id}"
            if waiting
            else (state.error_message or "the batch failed")
        ),
        retryable=waiting,
    )


__all__ = [
    "BATCHED",
    "BATCH_BUDGET",
    "BATCH_SCOPE",
    "BatchScope",
    "batched",
    "defer_to_batch",
    "request_body",
]
