"""Produce one key-point rationale: prompt a teacher in single or staged mode, with the cache.

`produce_rationale(engine, client, work)` is what a generation worker calls per (problem,
teacher, mode, stage mode, sample index). It keeps no state between calls: everything it needs
comes in (`RationaleWork`, the client, the engine), and everything it did comes out
(`RationaleOutcome`: the parsed key points or why there are none, plus one `CallRecord` per
stage called or replayed).

- single: one call; its text is parsed with `parse_response`.
- staged: `core_question`, then `solving_info` given it, then `solution` given both; each
  stage's answer is parsed before the next is sent, and the chain stops at the first failure
  (a later stage would be paid for nothing).

A failed call ends the chain with a `CallFailure` (kind from `errors`, `retryable` saying
whether a later retry of the whole item may succeed). A response that cannot be used is a
`ParseFailure`. Neither raises: both are data for the caller to store and count.

`CALL_GUARD`, when the caller sets it (in the thread that calls `produce_rationale`), is asked
before each stage's call: a reason it returns ends the chain with a `CallFailure` of kind
`STOPPED` and nothing is sent (a generation job that was cancelled while its chunk ran).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from db.queries.teachers import StoredCall, find_replayable_calls
from services.kpdd.parsing import assemble_key_points, parse_response, parse_stage
from services.kpdd.prompts import prompt_set_version, render_prompt
from services.kpdd.records import KeyPoints, Mode, ParseFailure, Solution, Stage, StageMode
from services.teachers.base import TeacherClient, TeacherRequest
from services.teachers.calls import CallRecord, cached_call, fingerprint_of
from services.teachers.pricing import usd_text

# Asked before each call; returns why no call may be made now, or None (see the module doc).
CALL_GUARD: ContextVar[Callable[[], str | None] | None] = ContextVar("kpdd_call_guard", default=None)
# The kind of the CallFailure of a call the guard stopped.
STOPPED = "job_stopped"


@dataclass(slots=True)
class RationaleWork:
    """One unit of work. `problem_id` links the call rows to the problem (None: an ad-hoc
    question, e.g. a probe of text not in the database). `refresh`: bypass the response cache
    and store the new responses over the cached ones (`cached_call(refresh=True)`)."""

    question: str
    mode: Mode
    stage_mode: StageMode = "single"
    sample_index: int = 0
    problem_id: int | None = None
    refresh: bool = False


@dataclass(slots=True)
class CallFailure:
    """The teacher could not be called successfully for `stage`."""

    stage: Stage
    kind: str
    message: str
    retryable: bool


@dataclass(slots=True)
class RationaleOutcome:
    """The result of one `produce_rationale`. `prompt_version` identifies the prompt chain (the
    version a rationale row stores)."""

    teacher: str
    prompt_version: str
    result: KeyPoints | ParseFailure | CallFailure
    calls: list[CallRecord] = field(default_factory=list)

    @property
    def key_points(self) -> KeyPoints | None:
        return self.result if isinstance(self.result, KeyPoints) else None

    @property
    def paid_calls(self) -> int:
        return sum(1 for c in self.calls if c.paid)

    @property
    def cached_calls(self) -> int:
        return sum(1 for c in self.calls if c.cached)

    @property
    def cost_usd(self) -> Decimal | None:
        """Dollars spent now (replays cost 0); None when a paid call has no price."""
        total = Decimal(0)
        for call in self.calls:
            if call.paid and call.cost_usd is None:
                return None
            total += call.cost_usd or Decimal(0)
        return total

    @property
    def tokens_in(self) -> int:
        return sum(c.tokens_in or 0 for c in self.calls)

    @property
    def tokens_out(self) -> int:
        return sum(c.tokens_out or 0 for c in self.calls)

    @property
    def latency_ms(self) -> int:
        """The teacher's answering time summed over the stages (original latency for replays)."""
        return sum(c.latency_ms or 0 for c in self.calls)

    def to_json(self) -> dict[str, Any]:
        result = self.result
        out: dict[str, Any] = {"teacher": self.teacher, "prompt_version": self.prompt_version}
        if isinstance(result, KeyPoints):
            out["status"] = "ok"
            out["key_points"] = {
                "core_question": result.core_question,
                "solving_info": result.solving_info,
                "solution_text": result.solution_text,
                "final_answer_text": result.final_answer_text,
                "program": result.program,
            }
        elif isinstance(result, ParseFailure):
            out["status"] = "parse_failure"
            out["failure"] = {"kind": result.kind, "message": result.message}
        else:
            out["status"] = "call_failure"
            out["failure"] = {
                "kind": result.kind,
                "message": result.message,
                "stage": result.stage,
                "retryable": result.retryable,
            }
        out["cost_usd"] = usd_text(self.cost_usd)
        out["paid_calls"] = self.paid_calls
        out["cached_calls"] = self.cached_calls
        out["tokens_in"] = self.tokens_in
        out["tokens_out"] = self.tokens_out
        out["latency_ms"] = self.latency_ms
        out["calls"] = [c.to_json() for c in self.calls]
        return out


def produce_rationale(engine: Engine, client: TeacherClient, work: RationaleWork) -> RationaleOutcome:
    """Run `work` through `client` (see the module doc). Raises only for bugs and database
    failures; a teacher failure or an unusable answer is in the outcome."""
    outcome = RationaleOutcome(client.label, prompt_set_version(work.mode, work.stage_mode), _pending())
    if work.stage_mode == "single":
        text = _ask(engine, client, work, outcome, "all")
        if isinstance(text, CallRecord):
            outcome.result = parse_response(text.text, _finish(text), work.mode)
        else:
            outcome.result = text
        return outcome

    core = _stage(engine, client, work, outcome, "core_question")
    if not isinstance(core, str):
        return _failed(outcome, core, "core_question", "a core question")
    info = _stage(engine, client, work, outcome, "solving_info", core_question=core)
    if not isinstance(info, list):
        return _failed(outcome, info, "solving_info", "a list of facts")
    solution = _stage(engine, client, work, outcome, "solution", core_question=core, solving_info=info)
    if not isinstance(solution, Solution):
        return _failed(outcome, solution, "solution", "a solution")
    outcome.result = assemble_key_points(core, info, solution)
    return outcome


def first_request(work: RationaleWork) -> TeacherRequest:
    """The request `produce_rationale` sends first for `work` (single: the only one; staged: the
    core question)."""
    stage: Stage | None = None if work.stage_mode == "single" else "core_question"
    return TeacherRequest(render_prompt(work.question, work.mode, work.stage_mode, stage), work.sample_index)


def prefetch_first_calls(
    engine: Engine, asks: Sequence[tuple[TeacherClient, RationaleWork]]
) -> dict[str, StoredCall | None]:
    """The cache's answers to the first requests of these rationales, in one query: a mapping for
    `services.teachers.calls.PREFETCHED`, set in the threads that then produce them (a staged
    rationale's later stages, which depend on the earlier answers, look themselves up)."""
    fingerprints = {fingerprint_of(client, first_request(work)) for client, work in asks}
    with engine.connect() as conn:
        found = find_replayable_calls(conn, sorted(fingerprints))
    return {fingerprint: found.get(fingerprint) for fingerprint in fingerprints}


def _pending() -> ParseFailure:
    return ParseFailure("empty", "not run")


def _finish(call: CallRecord) -> Any:
    return call.finish_reason or "other"


def _ask(
    engine: Engine,
    client: TeacherClient,
    work: RationaleWork,
    outcome: RationaleOutcome,
    stage: Stage,
    *,
    core_question: str | None = None,
    solving_info: list[str] | None = None,
) -> CallRecord | CallFailure:
    prompt = render_prompt(
        work.question,
        work.mode,
        work.stage_mode,
        None if stage == "all" else stage,
        core_question=core_question,
        solving_info=solving_info,
    )
    guard = CALL_GUARD.get()
    stopped = guard() if guard is not None else None
    if stopped is not None:
        return CallFailure(stage, STOPPED, stopped, retryable=False)
    call = cached_call(
        engine,
        client,
        TeacherRequest(prompt, work.sample_index),
        problem_id=work.problem_id,
        refresh=work.refresh,
    )
    outcome.calls.append(call)
    if call.status == "failed":
        return CallFailure(stage, call.error_kind or "unknown", call.error_message or "", call.retryable)
    return call


def _stage(
    engine: Engine,
    client: TeacherClient,
    work: RationaleWork,
    outcome: RationaleOutcome,
    stage: Stage,
    **earlier: Any,
) -> Any:
    call = _ask(engine, client, work, outcome, stage, **earlier)
    if isinstance(call, CallFailure):
        return call
    return parse_stage(call.text, _finish(call), work.mode, stage)


def _failed(outcome: RationaleOutcome, got: Any, stage: Stage, wanted: str) -> RationaleOutcome:
    if isinstance(got, CallFailure | ParseFailure):
        outcome.result = got
    else:  # the parser returned another record type than the stage's: report it, do not crash
        outcome.result = ParseFailure("malformed", f"stage {stage} did not yield {wanted}")
    return outcome


__all__ = [
    "CALL_GUARD",
    "STOPPED",
    "CallFailure",
    "RationaleOutcome",
    "RationaleWork",
    "first_request",
    "prefetch_first_calls",
    "produce_rationale",
]
