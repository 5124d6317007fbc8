"""Ingesting a provider batch's results: answers into the ledger, requests settled, money counted.

One transaction per batch (`services.generation.batches`, step 4): every answer becomes the
ledger row an online call would have written (`calls.answered`, at batch prices, with the
batch's id), its request `done`; a request that errored retryably, expired or was cancelled by
the provider is queued again while it has submissions left, and fails otherwise; a permanent
error fails it. The batch's figures (answers, errors, cost, and what the same answers would
have cost online) and its budget hold are settled in the same transaction, so a crash leaves
either nothing or everything ingested, and a batch is ingested once: only `submitted` requests
of a batch still `in_progress` are touched.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db.models import BatchRequest, ProviderBatch
from db.nul import escape_nul
from db.queries.batches import job_status_of, requests_of
from db.queries.budget import settle_hold
from db.queries.claims import settle_call
from db.queries.operations import db_now
from db.queries.teachers import NewTeacherCall
from services.generation.failures import safe_message
from services.teachers.base import TeacherClient
from services.teachers.batches import BatchResult
from services.teachers.batches import ProviderBatch as RemoteBatch
from services.teachers.calls import answered
from services.teachers.errors import TeacherCallError

if TYPE_CHECKING:
    from services.generation.batches import CycleReport

log = logging.getLogger(__name__)


def requeue_or_fail(
    request: BatchRequest, error: TeacherCallError, max_submissions: int, retry: bool
) -> bool:
    """Queue a request again for the next batch (True), or fail it: `retry` False (a permanent
    error, or its job ended), or no submission left."""
    if retry and request.submissions < max_submissions:
        request.state = "queued"
        request.batch_id = None
        return True
    request.state = "failed"
    request.error_kind = error.kind[:32]
    request.error_message = safe_message(
        error.message
        + ("" if not retry else f" (sent in {request.submissions} batches, KPDD_BATCH_MAX_SUBMISSIONS)")
    )
    return False


def ingest_results(
    engine: Engine,
    client: TeacherClient,
    batch_id: int,
    remote: RemoteBatch,
    results: list[BatchResult],
    max_submissions: int,
    report: CycleReport,
) -> None:
    """Write an ended batch's results (module doc)."""
    with Session(engine) as session, session.begin():
        batch = session.get(ProviderBatch, batch_id, with_for_update=True)
        if batch is None or batch.state != "in_progress":
            return  # ingested by an earlier cycle
        waiting = {r.fingerprint: r for r in requests_of(session, batch_id) if r.state == "submitted"}
        cost, online = Decimal(0), Decimal(0)
        counts = {"succeeded": 0, "errored": 0, "expired": 0, "cancelled": 0}
        holder = f"batch:{batch.tag}"
        live = job_status_of(session, batch.job_id) in ("queued", "running")  # else nothing is sent again
        for result in results:
            request = waiting.pop(result.custom_id, None)
            if request is None:
                continue  # not ours, or settled already
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
            if result.outcome == "succeeded" and result.response is not None:
                row = NewTeacherCall(**request.intent)
                row.attempts = 1
                answered(row, client, result.response, batch_id=batch_id)
                call_id, _written = settle_call(session, row, holder)
                request.state = "done"
                request.call_id = call_id
                if row.cost_usd is not None:
                    cost += row.cost_usd
                if client.price is not None and row.tokens_in is not None and row.tokens_out is not None:
                    online += client.price.cost(row.tokens_in, row.tokens_out)
                report.ingested += 1
                continue
            error = result.error or TeacherCallError("server", f"no answer ({result.outcome})")
            retry = (error.retryable or result.outcome in ("expired", "cancelled")) and live
            if requeue_or_fail(request, error, max_submissions, retry):
                report.requeued_requests += 1
            else:
                report.failed_requests += 1
        for request in waiting.values():  # the provider did not report it: send it again
            missing = TeacherCallError("server", "the batch's results did not include this request")
            if requeue_or_fail(request, missing, max_submissions, live):
                report.requeued_requests += 1
            else:
                report.failed_requests += 1
        batch.state = "cancelled" if remote.status == "cancelled" else "ended"
        batch.provider_status = remote.raw_status
        batch.succeeded = counts["succeeded"]
        batch.errored = counts["errored"]
        batch.expired = counts["expired"]
        batch.cancelled = counts["cancelled"] + len(waiting)
        batch.cost_usd = cost if client.price is not None else None
        batch.online_cost_usd = online if client.price is not None else None
        batch.ended_at = db_now(session)
        if batch.hold_id is not None:
            settle_hold(session, batch.job_id, batch.hold_id, cost)
            batch.hold_id = None
        log.info(
            "batch %s (%s): %s; %d answers ingested, %d errored, %d expired, %d cancelled",
            batch_id,
            escape_nul(remote.id),
            remote.raw_status,
            counts["succeeded"],
            counts["errored"],
            counts["expired"],
            batch.cancelled,
        )


__all__ = ["ingest_results", "requeue_or_fail"]
