"""Rate-limit enforcement and reproducible random faults, over real HTTP."""

from __future__ import annotations

import anthropic
import httpx
import openai
import orjson
import pytest

from services.kpdd.parsing import parse_response
from services.kpdd.prompts import render_prompt
from services.kpdd.records import FinishReason, KeyPoints, ParseFailure
from services.teachers.simulator import (
    FaultRates,
    SimulatorConfig,
    decide_fault,
    fingerprint,
    run_in_thread,
)
from tests.services.teachers.simulator_helpers import (
    API_KEY,
    anthropic_client,
    call,
    gsm8k_bank,
    openai_client,
)

NATALIA = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


def test_requests_per_minute_is_enforced_per_model() -> None:
    with run_in_thread(SimulatorConfig(rpm=3), bank=gsm8k_bank()) as sim:
        prompt = render_prompt(NATALIA, "cot")
        with openai_client(sim.url) as client:
            for _ in range(3):
                assert call(client, prompt)[1] == "stop"
            with pytest.raises(openai.RateLimitError) as exc_info:
                call(client, prompt)
            response = exc_info.value.response
            # one request per 20 s refills: the wait is about 20 s
            assert 10 <= int(response.headers["retry-after"]) <= 20
            assert 10_000 <= int(response.headers["retry-after-ms"]) <= 20_000
            assert response.headers["x-ratelimit-limit-requests"] == "3"
            assert response.headers["x-ratelimit-remaining-requests"] == "0"
            assert response.json()["error"]["code"] == "rate_limit_exceeded"
            # a refused request sends no answer, so its content fault is not counted
            with pytest.raises(openai.RateLimitError):
                call(client, prompt, headers={"x-sim-fault": "wrong"})
            assert sim.stats["fault_wrong"] == 0
            # another model has its own allowance
            assert call(client, prompt, model="other-model")[1] == "stop"
        with anthropic_client(sim.url) as an:
            with pytest.raises(anthropic.RateLimitError) as an_info:
                call(an, prompt)
            assert an_info.value.response.json()["error"]["type"] == "rate_limit_error"
            assert int(an_info.value.response.headers["retry-after"]) >= 10
        stats = sim.stats
        assert stats["rate_limited"] == 3 and stats["answered"] == 4 and stats["requests"] == 7
        # a reset refills the buckets
        sim.reset()
        with openai_client(sim.url) as client:
            assert call(client, prompt)[1] == "stop"


def test_tokens_per_minute_is_enforced() -> None:
    prompt = render_prompt(NATALIA, "cot")  # about 760 prompt + 80 completion tokens
    with run_in_thread(SimulatorConfig(tpm=2000), bank=gsm8k_bank()) as sim, openai_client(sim.url) as client:
        assert call(client, prompt)[1] == "stop"
        assert call(client, prompt)[1] == "stop"
        with pytest.raises(openai.RateLimitError) as exc_info:
            call(client, prompt)
        body = exc_info.value.response.json()["error"]
        assert body["type"] == "tokens"
        assert int(exc_info.value.response.headers["retry-after"]) >= 1
        assert sim.stats["rate_limited"] == 1


def test_a_request_larger_than_the_minute_allowance_is_400() -> None:
    with run_in_thread(SimulatorConfig(tpm=100), bank=gsm8k_bank()) as sim, openai_client(sim.url) as client:
        with pytest.raises(openai.BadRequestError, match="too large"):
            call(client, render_prompt(NATALIA, "cot"))
        assert sim.stats["too_large"] == 1


def _post(client: httpx.Client, url: str, body: bytes) -> httpx.Response:
    return client.post(
        f"{url}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        timeout=10,
    )


def test_random_faults_are_exactly_predictable() -> None:
    """The fault of each attempt is decide_fault(seed, fingerprint(body), attempt): a test (or a
    benchmark) can know in advance what the server will do."""
    rates = FaultRates(server_error=0.3, rate_limit=0.2, wrong=0.2, malformed=0.1, truncate=0.1)
    seed = 1234
    prompt = render_prompt(NATALIA, "pot")
    bodies = [
        orjson.dumps({"model": "gold", "messages": prompt.openai_messages(), "seed": k}) for k in range(4)
    ]
    with (
        run_in_thread(SimulatorConfig(seed=seed, faults=rates), bank=gsm8k_bank()) as sim,
        httpx.Client() as http,
    ):
        seen: list[str | None] = []
        for body in bodies:
            for attempt in range(6):
                expected = decide_fault(seed, fingerprint(body), attempt, rates)
                r = _post(http, sim.url, body)
                if expected in ("500", "429"):
                    assert r.status_code == int(expected), (attempt, expected)
                    seen.append(expected)
                    continue
                assert r.status_code == 200, (attempt, expected, r.text)
                choice = r.json()["choices"][0]
                finish: FinishReason = "length" if choice["finish_reason"] == "length" else "stop"
                parsed = parse_response(choice["message"]["content"], finish, "pot")
                if expected == "malformed":
                    assert isinstance(parsed, ParseFailure) and parsed.kind == "malformed"
                elif expected == "truncate":
                    assert isinstance(parsed, ParseFailure) and parsed.kind == "truncated"
                else:
                    assert isinstance(parsed, KeyPoints)
                    wrong = "ans = step_2 + 1" in (parsed.program or "")
                    assert wrong == (expected == "wrong")
                seen.append(expected)
        stats = sim.stats
        for kind in ("500", "429", "wrong", "malformed", "truncate"):
            assert stats[f"fault_{kind}"] == seen.count(kind)
    assert len(set(seen)) >= 4  # the draw really varies over 24 attempts


def test_same_seed_same_faults_other_seed_other_faults() -> None:
    rates = FaultRates(server_error=0.5)
    prompt = render_prompt(NATALIA, "cot")
    body = orjson.dumps({"model": "gold", "messages": prompt.openai_messages()})

    def statuses(seed: int) -> list[int]:
        with (
            run_in_thread(SimulatorConfig(seed=seed, faults=rates), bank=gsm8k_bank()) as sim,
            httpx.Client() as http,
        ):
            return [_post(http, sim.url, body).status_code for _ in range(16)]

    first = statuses(7)
    assert first == statuses(7)
    assert set(first) == {200, 500}
    assert first != statuses(8)


def test_forced_none_overrides_random_faults() -> None:
    config = SimulatorConfig(faults=FaultRates(server_error=1.0))
    with run_in_thread(config, bank=gsm8k_bank()) as sim, openai_client(sim.url) as client:
        with pytest.raises(openai.InternalServerError):
            call(client, render_prompt(NATALIA, "cot"))
        assert call(client, render_prompt(NATALIA, "cot"), headers={"x-sim-fault": "none"})[1] == "stop"
