"""Cached, recorded teacher calls: the fingerprint of a request, cache replay, the ledger row.

`request_fingerprint` is the sha256 of the normalised request: provider, model, the rendered
system text and turns, the generation options and the sample index, as canonical JSON. The base
URL is not part of it (the same model behind another host or proxy is the same teacher), nor is
the key or anything about the caller.

`cached_call(engine, client, request)` looks the fingerprint up in `teacher_calls`; a stored
paid response (`ok` or `refused`) is replayed and nothing is sent. Otherwise the request is
claimed before the client is called, and the outcome, success or failure, is written over the
claim after it, each in its own short transaction (no transaction stays open across the HTTP
call). Re-running the same work, or changing the parser or the validator, therefore pays
nothing: only the text and the finish reason are needed to parse again, and both are stored.

No request is paid twice at the same time. The claim (`db.queries.teachers.claim_call`) writes
the row as `in_flight` with its holder (`host:pid:thread`), `claim_until` (renewed every third of
`KPDD_CLAIM_TTL_S` by the process's `LeaseKeeper` while the call runs, rate-limit waits and
retries included) and the call's estimated cost (`services.teachers.tokens`). A caller that finds
a live claim on its request, in any thread, process or host, polls until the claim is settled
and replays its outcome (a `failed` one is claimed and asked again); a claim whose holder died
is taken over once `claim_until` passes, or at once when it is a claim of the caller's own
process that none of its threads is working (a call whose outcome could not be written because
the database went away, asked again by the retried chunk). An outcome that cannot be written
because the database is away is kept, its claim still held, and written by a background thread
once the database is back (`_LaterSettles`): meanwhile the request is waited for, not paid
again, and afterwards replayed. A call that raises (a bug, an unreachable limiter)
ends its claim at once, leaving the row `in_flight`: an outcome unknown that may have been paid,
counted in spend at its estimate until a later call settles it. The row written before the call
is the intent: every paid call reaches the ledger, crashes included.

A batch teacher inside a generation chunk does not call: a request the cache cannot answer is
queued for a provider batch (`services.teachers.batching`), and its answer is written into the
ledger by the batch poller, after which it is replayed here like any other.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from db.engine import autocommit
from db.nul import escape_nul, escape_nul_json, unescape_nul
from db.queries.cache import replace_call
from db.queries.claims import (
    abandon_claim,
    claim_call,
    claim_state,
    release_claim,
    renew_claims,
    settle_call,
    settle_claimed,
)
from db.queries.teachers import IN_FLIGHT, NewTeacherCall, StoredCall, find_replayable_call
from services.kpdd.prompts import RenderedPrompt
from services.kpdd.records import FinishReason, Stage
from services.leases import LeaseKeeper, holder_id, lease_ttl_s, process_prefix
from services.teachers.base import CallResult, TeacherClient, TeacherRequest, TeacherResponse
from services.teachers.batching import batched, defer_to_batch
from services.teachers.pricing import usd_text
from services.teachers.tokens import expected_cost

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
# Polling a claim held by another caller: the first wait, growing by half each time to the last.
CLAIM_POLL_FIRST_S = 0.05
CLAIM_POLL_MAX_S = 1.0


def _renew(engine: Engine, ids: list[int], prefix: str, ttl_s: float) -> int:
    with engine.begin() as conn:
        return renew_claims(conn, ids, prefix, ttl_s)


# Renews this process's claims while their calls run (services.leases).
CLAIMS = LeaseKeeper("claim", _renew)


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


# fingerprint -> the stored paid response (None: none) for requests looked up ahead, in one query
# (`services.teachers.rationale.prefetch_first_calls`); set in the calling thread. A request found
# without one is claimed at once: a response stored meanwhile makes the claim fail, and the
# caller waits, looks again and replays, so nothing is paid twice.
PREFETCHED: ContextVar[Mapping[str, StoredCall | None] | None] = ContextVar("kpdd_prefetched", default=None)


def cached_call(
    engine: Engine,
    client: TeacherClient,
    request: TeacherRequest,
    *,
    problem_id: int | None = None,
    refresh: bool = False,
) -> CallRecord:
    """Replay the stored response for `request`, or call the teacher and record the outcome.

    Idempotent: calling it again for the same request replays, and a redelivered task never adds
    a row. Exceptions that are not teacher errors (bugs, a database failure) propagate.
    `refresh`: call even when a response is stored, and store the new paid response over it
    (same row and id; a failed refresh keeps the stored one: `db.queries.cache.replace_call`)."""
    fingerprint = fingerprint_of(client, request)
    holder = holder_id()
    prefetched = PREFETCHED.get()
    with _asking(fingerprint):
        claim_id = 0
        waited = False  # a refresh that waited for another caller's refresh replays its outcome
        orphan: str | None = None
        while True:
            if refresh and not waited:
                stored = None
            elif prefetched is not None and fingerprint in prefetched:
                stored = prefetched[fingerprint]  # looked up with its round (`prefetch_replayable`)
                prefetched = None  # once: a second pass (after a wait) looks again
            else:
                # Plain connections, not ORM sessions: this runs around every teacher call.
                with autocommit(engine).connect() as conn:
                    stored = find_replayable_call(conn, fingerprint)
            if stored is not None:
                return replayed(stored, request.prompt.stage)
            intent = _intent(client, request, fingerprint, problem_id)
            if batched(client):  # a batch teacher inside a chunk: queued for a provider batch
                return defer_to_batch(engine, client, request, fingerprint, asdict(intent), problem_id)
            estimate = expected_cost(engine, client, request.prompt)
            with autocommit(engine).connect() as conn:  # one statement
                taken = claim_call(
                    conn,
                    intent,
                    holder,
                    lease_ttl_s(),
                    estimate,
                    refresh=refresh and not waited,
                    orphan=orphan,
                )
            if taken is not None:
                claim_id = taken
                break
            there_was_one, orphan = _wait_for_claim(engine, fingerprint)
            waited = waited or there_was_one
        with CLAIMS.held(engine, claim_id):
            try:
                result = client.call(request)
            except BaseException:
                _abandon(engine, fingerprint, holder)
                raise
            try:
                return _settle(engine, client, request, fingerprint, result, problem_id, holder, refresh)
            except (OperationalError, InterfaceError):
                # The database went away after the answer: keep the claim (renewed) and write
                # the outcome once it is back, so that nobody pays for it again meanwhile.
                _LATER.add(
                    engine,
                    claim_id,
                    fingerprint,
                    lambda: _settle(
                        engine, client, request, fingerprint, result, problem_id, holder, refresh
                    ),
                    lambda: _abandon(engine, fingerprint, holder),
                )
                raise
            except BaseException:
                _abandon(engine, fingerprint, holder)
                raise


def _settle(
    engine: Engine,
    client: TeacherClient,
    request: TeacherRequest,
    fingerprint: str,
    result: CallResult,
    problem_id: int | None,
    holder: str,
    refresh: bool,
) -> CallRecord:
    """Write the call's outcome over its claim (module doc) and return its record."""
    row = _row(client, request, fingerprint, result, problem_id)
    with autocommit(engine).connect() as conn:  # one statement, in the common case
        call_id = settle_claimed(conn, row, holder)
    if call_id is None:  # nothing written: the other cases take several statements, together
        with engine.begin() as conn:
            if refresh:  # the claim kept a stored response: refresh rules
                call_id, _written = replace_call(conn, row)
                release_claim(conn, fingerprint, holder)
            else:  # the claim was lost meanwhile (module doc of db.queries.teachers)
                call_id, _written = settle_call(conn, row, holder)
    return CallRecord(
        call_id=call_id,
        fingerprint=fingerprint,
        stage=request.prompt.stage,
        status=row.status,
        cached=False,
        text=result.response.text if result.response else None,
        finish_reason=result.response.finish_reason if result.response else None,
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        cost_usd=row.cost_usd,
        stored_cost_usd=row.cost_usd,
        latency_ms=row.latency_ms,
        attempts=result.attempts,
        error_kind=row.error_kind,
        error_message=result.error.message if result.error else None,
        retryable=result.error.retryable if result.error else False,
    )


# Fingerprints this process's threads are asking now (claiming, calling or settling), counted.
_ASKING: Counter[str] = Counter()
_ASKING_LOCK = threading.Lock()


@contextmanager
def _asking(fingerprint: str) -> Iterator[None]:
    with _ASKING_LOCK:
        _ASKING[fingerprint] += 1
    try:
        yield
    finally:
        with _ASKING_LOCK:
            _ASKING[fingerprint] -= 1
            if _ASKING[fingerprint] <= 0:
                del _ASKING[fingerprint]


def _orphaned(claimed_by: str | None, fingerprint: str) -> bool:
    """A live claim of this process that none of its threads is working: left by a call whose
    outcome could not be written (the database went away). It may be taken at once."""
    if claimed_by is None or not claimed_by.startswith(process_prefix()):
        return False
    with _ASKING_LOCK:
        return _ASKING[fingerprint] <= 1  # only the caller asking now


def _wait_for_claim(engine: Engine, fingerprint: str) -> tuple[bool, str | None]:
    """Poll while another caller holds a live claim on the request. Returns whether there was
    one, and the holder of an orphaned claim of this process (`_orphaned`) to take over."""
    pause = CLAIM_POLL_FIRST_S
    waited = False
    while True:
        with autocommit(engine).connect() as conn:
            state = claim_state(conn, fingerprint)
        if state is None or not state.live:
            if not waited:
                time.sleep(CLAIM_POLL_FIRST_S)  # settled between our claim and this look
            return waited, None
        if _orphaned(state.claimed_by, fingerprint):
            return waited, state.claimed_by
        waited = True
        time.sleep(pause)
        pause = min(CLAIM_POLL_MAX_S, pause * 1.5)


class _LaterSettles:
    """Outcomes that could not be written because the database was away, written by a daemon
    thread as soon as it is back (tried every `period_s`, for at most `max_s`; then the claim
    is let go as an outcome unknown). Until then the claim stays registered with `CLAIMS` (still
    renewed, when the database allows) and its fingerprint counts as asked in this process, so
    neither another process nor a retry in this one pays for the request again."""

    period_s = 1.0
    max_s = 600.0

    def __init__(self) -> None:
        self._pending: list[tuple[Engine, int, str, Callable[[], object], Callable[[], None], float]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(
        self,
        engine: Engine,
        claim_id: int,
        fingerprint: str,
        settle: Callable[[], object],
        give_up: Callable[[], None],
    ) -> None:
        CLAIMS.add(engine, claim_id)
        with _ASKING_LOCK:
            _ASKING[fingerprint] += 1
        with self._lock:
            self._pending.append(
                (engine, claim_id, fingerprint, settle, give_up, time.monotonic() + self.max_s)
            )
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kpdd-later-settles", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.period_s)
            with self._lock:
                pending, self._pending = self._pending, []
                if not pending:
                    self._thread = None
                    return
            left = []
            for item in pending:
                engine, claim_id, fingerprint, settle, give_up, deadline = item
                try:
                    settle()
                except Exception as exc:
                    if time.monotonic() < deadline:
                        left.append(item)
                        continue
                    log.error("gave up writing the outcome of %s: %s", fingerprint[:12], exc)
                    give_up()
                CLAIMS.drop(engine, claim_id)
                with _ASKING_LOCK:
                    _ASKING[fingerprint] -= 1
                    if _ASKING[fingerprint] <= 0:
                        del _ASKING[fingerprint]
            with self._lock:
                self._pending.extend(left)


_LATER = _LaterSettles()


def _abandon(engine: Engine, fingerprint: str, holder: str) -> None:
    try:
        with autocommit(engine).connect() as conn:
            abandon_claim(conn, fingerprint, holder)
    except Exception as exc:  # the claim expires by itself: it is no longer renewed
        log.warning("could not end the claim on %s: %s", fingerprint[:12], exc)


def _intent(
    client: TeacherClient, request: TeacherRequest, fingerprint: str, problem_id: int | None
) -> NewTeacherCall:
    """The row of a call about to be made: what it is for, no outcome yet."""
    prompt = request.prompt
    return NewTeacherCall(
        fingerprint=fingerprint,
        provider=client.provider,
        model=client.spec.model,
        mode=prompt.mode,
        stage_mode=prompt.stage_mode,
        stage=prompt.stage,
        prompt_version=prompt.version,
        status=IN_FLIGHT,
        options=client.generation_options(),
        problem_id=problem_id,
        sample_index=request.sample_index,
        attempts=0,
    )


def _row(
    client: TeacherClient,
    request: TeacherRequest,
    fingerprint: str,
    result: CallResult,
    problem_id: int | None,
) -> NewTeacherCall:
    row = _intent(client, request, fingerprint, problem_id)
    row.status = "failed"
    row.latency_ms = result.latency_ms
    row.attempts = result.attempts
    response, error = result.response, result.error
    if response is not None:
        answered(row, client, response)
    elif error is not None:
        row.error_kind = error.kind
        row.error_message = escape_nul(error.message)
        row.http_status = error.status_code
        if error.body is not None:
            row.response = escape_nul_json(
                error.body if isinstance(error.body, dict) else {"body": error.body}
            )
    return row


def answered(
    row: NewTeacherCall, client: TeacherClient, response: TeacherResponse, batch_id: int | None = None
) -> None:
    """Fill in a ledger row with an answer; `batch_id`: paid through that provider batch, at
    batch prices."""
    refused = response.finish_reason == "refusal"
    row.status = "refused" if refused else "ok"
    row.error_kind = "refusal" if refused else None
    row.finish_reason = response.finish_reason
    row.response_text = escape_nul(response.text)
    row.tokens_in = response.tokens_in
    row.tokens_out = response.tokens_out
    row.response = escape_nul_json(response.raw)
    row.batch_id = batch_id
    if client.price is not None and response.tokens_in is not None and response.tokens_out is not None:
        row.cost_usd = client.price.cost(response.tokens_in, response.tokens_out, batch=batch_id is not None)


def replayed(stored: StoredCall, stage: Stage) -> CallRecord:
    """The record of a stored paid response replayed from the cache."""
    finish: Any = stored.finish_reason
    return CallRecord(
        call_id=stored.id,
        fingerprint=stored.fingerprint,
        stage=stage,
        status=stored.status,
        cached=True,
        text=unescape_nul(stored.response_text),
        finish_reason=finish,
        tokens_in=stored.tokens_in,
        tokens_out=stored.tokens_out,
        cost_usd=Decimal(0),
        stored_cost_usd=stored.cost_usd,
        latency_ms=stored.latency_ms,
        attempts=0,
        error_kind=stored.error_kind,
    )


__all__ = [
    "CLAIMS",
    "FINGERPRINT_VERSION",
    "PREFETCHED",
    "CallRecord",
    "answered",
    "cached_call",
    "fingerprint_of",
    "replayed",
    "request_fingerprint",
]
