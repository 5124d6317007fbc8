"""One batch request answered as the synchronous endpoint would answer it.

The same reading, answer, fault and body code as `SimulatorApp._model_call`, without what a
batch does not have: no rate limits, no latency, no hang. A forced fault (`gold+fault=KIND[*N]`
in the line's model) applies as online (attempt numbers are this worker's, so a resubmitted
line is a next attempt); a forced or drawn `429` is answered as a 429 line and `500`/`hang` as a
500 line. Random HTTP faults (`--error-rate`, ...) are not drawn for batch lines:
`batch_error_rate` is their error knob, drawn from the seed, the batch id and the custom_id.
Anything a line cannot be answered for is a per-line error (400 bad body, 422 unknown problem),
never an exception.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from services.teachers.simulator.faults import (
    HTTP_FAULTS,
    FaultKind,
    decide_fault,
    fingerprint,
    parse_forced,
    split_model,
)
from services.teachers.simulator.wire import (
    Provider,
    WireError,
    anthropic_body,
    error_body,
    estimate_tokens,
    openai_body,
    parse_anthropic,
    parse_openai,
)

if TYPE_CHECKING:
    from services.teachers.simulator.app import SimulatorApp

DRAWN_ERROR_MESSAGE = "The server had an error while processing your request (simulated batch error)."


@dataclass(slots=True)
class LineAnswer:
    """A batch line's answer: HTTP-like status, the body the synchronous endpoint would send
    (a chat completion / message, or the provider's error body) and its request id."""

    status: int
    body: dict[str, Any]
    request_id: str

    @property
    def ok(self) -> bool:
        return self.status == 200


def drawn_error(seed: int, batch_id: str, custom_id: str, rate: float) -> bool:
    """Whether `batch_error_rate` fails this line: a pure function of its arguments."""
    if rate <= 0:
        return False
    h = hashlib.blake2b(digest_size=8, key=seed.to_bytes(8, "little", signed=True))
    h.update(batch_id.encode())
    h.update(b"\0")
    h.update(custom_id.encode())
    return int.from_bytes(h.digest(), "little") / 2.0**64 < rate


def bug_answer(provider: Provider, message: str) -> LineAnswer:
    """A 500 line for a request the simulator failed to answer (a bug, logged by the caller)."""
    body = error_body(provider, 500, f"teacher simulator error: {message}", "req_sim_bug")
    return LineAnswer(500, orjson.loads(body), "req_sim_bug")


def answer_line(app: SimulatorApp, provider: Provider, body: Any, *, fail: bool) -> LineAnswer:
    """Answer one request body of a batch; `fail`: the drawn batch error applies."""
    from services.teachers.simulator.app import UNKNOWN_PROBLEM_STATUS, refusal_message

    stats = app.stats
    request_id = f"req_sim{app._next_id()}"

    def error(status: int, message: str) -> LineAnswer:
        stats.add("batch_lines_errored")
        raw_error = error_body(provider, status, message, request_id)
        return LineAnswer(status, orjson.loads(raw_error), request_id)

    try:
        if not isinstance(body, dict):
            raise WireError("the request body must be a JSON object")
        raw = orjson.dumps(body)
        chat = parse_openai(raw) if provider == "openai" else parse_anthropic(raw)
        base_model, suffix = split_model(chat.model)
        forced = parse_forced(suffix) if suffix else None
    except (WireError, ValueError, TypeError) as exc:
        return error(400, str(exc))
    reading = app._read(chat)
    if reading.rationale is None:
        return error(UNKNOWN_PROBLEM_STATUS, refusal_message(reading))
    if fail:
        return error(500, DRAWN_ERROR_MESSAGE)

    fault: FaultKind | None = None
    fp, attempt = b"", 0
    if forced is not None or app._random_faults:
        fp = fingerprint(raw)
        attempt = app._attempt(fp)
        if forced is not None:
            fault = forced.kind if forced.applies(attempt) else None
        else:
            fault = decide_fault(app.config.seed, fp, attempt, app.config.faults)
            if fault in HTTP_FAULTS:
                fault = None  # batch errors come from batch_error_rate
    if fault == "429":
        return error(429, "simulated rate limit")
    if fault in HTTP_FAULTS:
        return error(500, "The server had an error while processing your request (simulated).")

    choices, counters = app._choices(chat, reading, fault, forced is not None, fp, attempt)
    prompt_tokens = estimate_tokens(chat.prompt_chars) + 4 * chat.message_count
    stats.add("batch_lines_answered")
    for name in counters:
        stats.add(name)
    response_id = app._next_id()
    if provider == "openai":
        out = openai_body(f"chatcmpl-sim{response_id}", int(time.time()), base_model, choices, prompt_tokens)
    else:
        out = anthropic_body(f"msg_sim{response_id}", base_model, choices[0], prompt_tokens)
    return LineAnswer(200, orjson.loads(out), request_id)
