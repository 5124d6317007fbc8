"""Teacher clients over real HTTP: both SDKs against the simulator, every fault kind, retries.

Each test uses a fresh simulator (attempt numbers start at 0, so `500*2` means "the first two
attempts of each request fail") and a fresh SQLite database for the call records.
"""

from __future__ import annotations

import random

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from db.models import TeacherCall
from services.kpdd.prompts import render_prompt
from services.kpdd.records import KeyPoints, ParseFailure
from services.teachers.base import RetryPolicy, TeacherClient, TeacherRequest, TeacherResponse
from services.teachers.errors import classify, retry_after
from services.teachers.rationale import CallFailure, RationaleWork, produce_rationale
from services.teachers.registry import build_client
from services.teachers.simulator import SimulatorHandle
from services.teachers.spec import parse_spec
from tests.services.teachers.clients_support import (
    Sleeps,
    closed_port_url,
    engine,
    fake_keys,
    gsm8k_items,
    make_client,
    sim,
    sim_bank,
    spec_for,
    teacher_settings,
)

__all__ = ["engine", "fake_keys", "sim", "sim_bank"]  # fixtures used here

pytestmark = pytest.mark.usefixtures("fake_keys")

PROVIDERS = ("openai", "anthropic", "openai-compatible", "sim")


def _rows(engine: Engine) -> list[TeacherCall]:
    with Session(engine) as session:
        return list(session.scalars(select(TeacherCall).order_by(TeacherCall.id)))


# --- both wire formats, both stage modes, both modes ----------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stage_mode", ["single", "staged"])
@pytest.mark.parametrize("mode", ["cot", "pot"])
def test_every_provider_mode_and_stage_mode_yields_key_points(
    sim: SimulatorHandle, engine: Engine, provider: str, stage_mode: str, mode: str
) -> None:
    item = gsm8k_items(1)[0]
    with make_client(spec_for(provider, sim)) as client:
        outcome = produce_rationale(engine, client, RationaleWork(item.question, mode, stage_mode))  # type: ignore[arg-type]

    key_points = outcome.result
    assert isinstance(key_points, KeyPoints), key_points
    assert "farmers' market" in key_points.core_question
    assert any("16 eggs" in fact for fact in key_points.solving_info)
    if mode == "cot":
        assert key_points.final_answer_text == item.answer
        assert key_points.program is None
    else:
        assert key_points.program is not None and "ans =" in key_points.program
    expected_calls = 1 if stage_mode == "single" else 3
    assert len(outcome.calls) == expected_calls == outcome.paid_calls
    wire = "anthropic" if provider == "anthropic" else "openai"
    assert sim.stats[wire] == expected_calls and sim.stats["requests"] == expected_calls
    rows = _rows(engine)
    assert [r.stage for r in rows] == (
        ["all"] if stage_mode == "single" else ["core_question", "solving_info", "solution"]
    )
    for row in rows:
        assert row.status == "ok" and row.attempts == 1 and row.error_kind is None
        assert row.provider == provider and row.mode == mode and row.stage_mode == stage_mode
        assert row.tokens_in and row.tokens_out and row.latency_ms is not None
        assert row.response is not None and row.response_text
        assert row.prompt_version.startswith(f"kpdd-{mode}-{stage_mode}")


def test_anthropic_sends_the_system_prompt_top_level_and_reads_text_blocks(
    sim: SimulatorHandle, engine: Engine
) -> None:
    item = gsm8k_items(2)[1]
    with make_client(spec_for("anthropic", sim)) as client:
        outcome = produce_rationale(engine, client, RationaleWork(item.question, "cot"))
    assert isinstance(outcome.result, KeyPoints)
    assert outcome.result.final_answer_text == item.answer
    raw = _rows(engine)[0].response
    assert raw is not None and raw["type"] == "message" and raw["content"][0]["type"] == "text"
    assert raw["stop_reason"] == "end_turn"


# --- retryable faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_rate_limits_are_retried_honouring_retry_after(
    sim: SimulatorHandle, engine: Engine, provider: str
) -> None:
    sleeps = Sleeps()
    item = gsm8k_items(1)[0]
    with make_client(spec_for(provider, sim, fault="429*2"), sleeps, teacher_backoff_s=0.01) as client:
        outcome = produce_rationale(engine, client, RationaleWork(item.question, "cot"))
    assert isinstance(outcome.result, KeyPoints)
    assert sim.stats["fault_429"] == 2
    # The simulator says Retry-After: 1 s; the backoff alone would wait ~0.01 s.
    assert len(sleeps.waits) == 2 and all(w >= 1.0 for w in sleeps.waits)
    (row,) = _rows(engine)
    assert row.status == "ok" and row.attempts == 3


def test_server_errors_are_retried_with_exponential_backoff_and_jitter(
    sim: SimulatorHandle, engine: Engine
) -> None:
    sleeps = Sleeps()
    item = gsm8k_items(1)[0]
    spec = spec_for("openai", sim, fault="500*3")
    with make_client(spec, sleeps, teacher_backoff_s=0.5, teacher_backoff_max_s=4.0) as client:
        outcome = produce_rationale(engine, client, RationaleWork(item.question, "pot"))
    assert isinstance(outcome.result, KeyPoints)
    assert sim.stats["fault_500"] == 3 and sim.stats["answered"] == 1
    w1, w2, w3 = sleeps.waits
    assert 0.25 <= w1 <= 0.5 and 0.5 <= w2 <= 1.0 and 1.0 <= w3 <= 2.0
    (row,) = _rows(engine)
    assert row.attempts == 4 and row.status == "ok"


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(max_attempts=20, backoff_s=1.0, backoff_max_s=3.0)
    rng = random.Random(0)
    waits = [policy.backoff(n, rng) for n in range(1, 20)]
    assert max(waits) <= 3.0
    assert min(waits[5:]) >= 1.5  # jitter stays in the upper half of the cap
    assert len(set(waits)) == len(waits)  # jittered, not lockstep


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_retries_are_bounded_and_the_failure_is_recorded(
    sim: SimulatorHandle, engine: Engine, provider: str
) -> None:
    sleeps = Sleeps()
    item = gsm8k_items(1)[0]
    with make_client(spec_for(provider, sim, fault="500"), sleeps, teacher_max_attempts=3) as client:
        outcome = produce_rationale(engine, client, RationaleWork(item.question, "cot", "staged"))
    failure = outcome.result
    assert isinstance(failure, CallFailure)
    assert (failure.kind, failure.stage, failure.retryable) == ("server", "core_question", True)
    assert sim.stats["requests"] == 3 and len(sleeps.waits) == 2
    assert len(outcome.calls) == 1  # the chain stops: later stages are not sent
    (row,) = _rows(engine)
    assert (row.status, row.error_kind, row.http_status, row.attempts) == ("failed", "server", 500, 3)
    assert row.cost_usd is None and row.response_text is None
    assert row.response and "error" in str(row.response)  # the error body the server sent is kept
    assert row.error_message


def test_a_hang_times_out_and_is_retried(sim: SimulatorHandle, engine: Engine) -> None:
    sleeps = Sleeps()
    item = gsm8k_items(1)[0]
    with make_client(spec_for("openai", sim, fault="hang*1"), sleeps, teacher_timeout_s=0.5) as client:
        result = client.call(TeacherRequest(render_prompt(item.question, "cot")))
    assert result.ok and result.attempts == 2 and len(sleeps.waits) == 1
    assert sim.stats["fault_hang"] == 1


def test_a_hang_that_never_ends_fails_as_timeout(sim: SimulatorHandle) -> None:
    item = gsm8k_items(1)[0]
    with make_client(
        spec_for("anthropic", sim, fault="hang"), teacher_timeout_s=0.3, teacher_max_attempts=2
    ) as c:
        result = c.call(TeacherRequest(render_prompt(item.question, "cot")))
    assert result.error is not None and result.error.kind == "timeout" and result.attempts == 2


def test_connection_errors_are_retried_then_reported() -> None:
    sleeps = Sleeps()
    item = gsm8k_items(1)[0]
    with make_client(f"openai:gpt-4o-mini@{closed_port_url()}", sleeps, teacher_max_attempts=3) as client:
        result = client.call(TeacherRequest(render_prompt(item.question, "cot")))
    assert result.error is not None and result.error.kind == "connection" and result.error.retryable
    assert result.attempts == 3 and len(sleeps.waits) == 2


def test_a_retry_after_beyond_the_allowed_wait_ends_the_call(sim: SimulatorHandle) -> None:
    sleeps = Sleeps()
    item = gsm8k_items(1)[0]
    with make_client(spec_for("openai", sim, fault="429"), sleeps, teacher_retry_after_max_s=0.5) as client:
        result = client.call(TeacherRequest(render_prompt(item.question, "cot")))
    assert result.error is not None and result.error.kind == "rate_limit"
    assert result.attempts == 1 and sleeps.waits == []
    assert "KPDD_TEACHER_RETRY_AFTER_MAX_S" in result.error.message


# --- permanent faults and bad answers ----------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_bad_request_is_permanent(sim: SimulatorHandle, engine: Engine, provider: str) -> None:
    sleeps = Sleeps()
    item = gsm8k_items(1)[0]
    # The simulator answers 400 to an unknown forced fault, as a provider does to a bad field.
    with make_client(spec_for(provider, sim, fault="nonsense"), sleeps) as client:
        outcome = produce_rationale(engine, client, RationaleWork(item.question, "cot"))
    assert isinstance(outcome.result, CallFailure)
    assert outcome.result.kind == "bad_request" and not outcome.result.retryable
    assert sleeps.waits == [] and sim.stats["requests"] == 1
    (row,) = _rows(engine)
    assert (row.status, row.http_status, row.attempts) == ("failed", 400, 1)
    assert "unknown simulated fault" in (row.error_message or "")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_refusal_is_permanent_and_recorded_as_refused(
    sim: SimulatorHandle, engine: Engine, provider: str
) -> None:
    sleeps = Sleeps()
    item = gsm8k_items(1)[0]
    with make_client(spec_for(provider, sim, fault="refusal"), sleeps) as client:
        outcome = produce_rationale(engine, client, RationaleWork(item.question, "cot"))
        assert isinstance(outcome.result, ParseFailure) and outcome.result.kind == "refused"
        assert sleeps.waits == [] and sim.stats["requests"] == 1
        (row,) = _rows(engine)
        assert (row.status, row.error_kind, row.finish_reason, row.attempts) == (
            "refused",
            "refusal",
            "refusal",
            1,
        )
        assert "sorry" in (row.response_text or "").lower()
        # A refusal was paid for: it is replayed, not asked again.
        again = produce_rationale(engine, client, RationaleWork(item.question, "cot"))
    assert isinstance(again.result, ParseFailure) and again.result.kind == "refused"
    assert again.cached_calls == 1 and sim.stats["requests"] == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("stage_mode", ["single", "staged"])
def test_truncation_is_a_parse_failure(
    sim: SimulatorHandle, engine: Engine, provider: str, stage_mode: str
) -> None:
    item = gsm8k_items(1)[0]
    with make_client(spec_for(provider, sim, fault="truncate")) as client:
        outcome = produce_rationale(engine, client, RationaleWork(item.question, "cot", stage_mode))  # type: ignore[arg-type]
    assert isinstance(outcome.result, ParseFailure) and outcome.result.kind == "truncated"
    assert len(outcome.calls) == 1  # a staged chain stops at the first unusable stage
    (row,) = _rows(engine)
    assert row.status == "ok" and row.finish_reason == "length"


def test_max_tokens_reaches_the_server(sim: SimulatorHandle, engine: Engine) -> None:
    item = gsm8k_items(1)[0]
    with make_client(spec_for("openai", sim) + ",max_tokens=20") as client:
        outcome = produce_rationale(engine, client, RationaleWork(item.question, "cot"))
    assert isinstance(outcome.result, ParseFailure) and outcome.result.kind == "truncated"
    assert sim.stats["length_limited"] == 1
    assert _rows(engine)[0].options == {"max_tokens": 20}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("mode", ["cot", "pot"])
def test_malformed_output_is_a_parse_failure(
    sim: SimulatorHandle, engine: Engine, provider: str, mode: str
) -> None:
    item = gsm8k_items(1)[0]
    with make_client(spec_for(provider, sim, fault="malformed")) as client:
        outcome = produce_rationale(engine, client, RationaleWork(item.question, mode))  # type: ignore[arg-type]
    assert isinstance(outcome.result, ParseFailure) and outcome.result.kind == "malformed"
    assert _rows(engine)[0].status == "ok"  # the call itself succeeded and was paid


def test_a_wrong_answer_parses_but_differs_from_the_gold(sim: SimulatorHandle, engine: Engine) -> None:
    item = gsm8k_items(1)[0]
    with make_client(spec_for("anthropic", sim, fault="wrong")) as client:
        outcome = produce_rationale(engine, client, RationaleWork(item.question, "cot", "staged"))
    assert isinstance(outcome.result, KeyPoints)
    assert outcome.result.final_answer_text not in (None, item.answer)


# --- classification --------------------------------------------------------------------------------


def _response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, headers=headers, request=httpx.Request("POST", "http://x/v1/chat/completions")
    )


@pytest.mark.parametrize(
    ("exc", "kind", "retryable"),
    [
        (openai.RateLimitError("slow down", response=_response(429), body=None), "rate_limit", True),
        (openai.InternalServerError("oops", response=_response(503), body=None), "server", True),
        (anthropic.InternalServerError("overloaded", response=_response(529), body=None), "server", True),
        (openai.AuthenticationError("bad key", response=_response(401), body=None), "auth", False),
        (anthropic.PermissionDeniedError("no", response=_response(403), body=None), "auth", False),
        (openai.BadRequestError("bad", response=_response(400), body=None), "bad_request", False),
        (openai.NotFoundError("no model", response=_response(404), body=None), "bad_request", False),
        (
            openai.BadRequestError(
                "policy", response=_response(400), body={"error": {"code": "content_policy_violation"}}
            ),
            "refusal",
            False,
        ),
        (openai.APITimeoutError(httpx.Request("POST", "http://x")), "timeout", True),
        (anthropic.APIConnectionError(request=httpx.Request("POST", "http://x")), "connection", True),
        (httpx.ConnectError("refused"), "connection", True),
    ],
)
def test_sdk_errors_are_classified(exc: Exception, kind: str, retryable: bool) -> None:
    error = classify(exc)
    assert error is not None and error.kind == kind and error.retryable is retryable


def test_bare_exceptions_are_not_teacher_errors() -> None:
    assert classify(RuntimeError("a bug")) is None
    assert classify(KeyError("choices")) is None


def test_retry_after_reads_seconds_milliseconds_and_dates() -> None:
    assert retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    assert retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "1"})) == 0.25
    when = retry_after(httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}), now=1445412480.0)
    assert when == 10.0
    assert retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert retry_after(httpx.Headers({})) is None


class _BuggyClient(TeacherClient):
    provider = "sim"
    wire = "openai"

    def __init__(self) -> None:
        super().__init__(parse_spec("sim:gold"), sleep=Sleeps())
        self.calls = 0

    def complete(self, request: TeacherRequest) -> TeacherResponse:
        self.calls += 1
        raise KeyError("choices")  # a bug in our own code


def test_a_bug_is_raised_at_once_never_retried() -> None:
    client = _BuggyClient()
    with pytest.raises(KeyError):
        client.call(TeacherRequest(render_prompt("What is 1 + 1?", "cot")))
    assert client.calls == 1


def test_the_before_attempt_hook_runs_before_every_attempt(sim: SimulatorHandle) -> None:
    seen: list[str] = []
    client = build_client(
        spec_for("openai", sim, fault="500*2"),
        settings=teacher_settings(),
        sleep=Sleeps(),
        before_attempt=lambda request: seen.append(request.prompt.stage),
    )
    with client:
        result = client.call(TeacherRequest(render_prompt(gsm8k_items(1)[0].question, "cot")))
    assert result.ok and result.attempts == 3
    assert seen == ["all", "all", "all"] and sim.stats["requests"] == 3
