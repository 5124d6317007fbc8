"""The worker runtime's rate-limited clients, against the suite's real Redis and the simulator over
HTTP: token estimates settled with the reported usage, waits that time out with their own error
kind, and waits that end when the job is cancelled or the worker stops.

Assertions are on the limiter's stored state (exact arithmetic with a generous slack for the
milliseconds a call takes) and on outcomes; none measures speed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from services.config import get_settings
from services.kpdd.prompts import render_prompt
from services.teachers.base import CallResult, TeacherClient, TeacherRequest
from services.teachers.rationale import CALL_GUARD
from services.teachers.simulator import ProblemBank, SimulatorConfig, SimulatorHandle, run_in_thread
from services.teachers.spec import parse_spec
from tests.servers import RedisServer
from tests.services.teachers.clients_support import gsm8k_items, sim_bank
from workers.ratelimit import RateLimiter
from workers.runtime import WorkerRuntime, estimated_tokens, limited_client_factory

__all__ = ["sim_bank"]  # fixtures used here

SLACK_MS = 500  # the milliseconds between reading Redis's clock and the take, generously


@pytest.fixture
def client(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    for key in [k for k in os.environ if k.startswith("KPDD_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("KPDD_TEACHER_BACKOFF_S", "0.01")
    monkeypatch.setenv("KPDD_TEACHER_BACKOFF_MAX_S", "0.02")
    get_settings.cache_clear()
    c = redis.Redis.from_url(redis_server.url())
    c.flushall()
    yield c
    get_settings.cache_clear()


@pytest.fixture
def sim(sim_bank: ProblemBank) -> Iterator[SimulatorHandle]:
    with run_in_thread(SimulatorConfig(hang_max_s=10.0), sim_bank) as handle:
        yield handle


def _request(index: int = 0) -> TeacherRequest:
    return TeacherRequest(render_prompt(gsm8k_items(1)[0].question, "cot"), sample_index=index)


def _teacher(sim: SimulatorHandle, limiter: RateLimiter, options: str, **factory: object) -> TeacherClient:
    spec = parse_spec(f"sim:gold@{sim.url}{options}")
    return limited_client_factory(limiter, "sqlite://", **factory)(spec)  # type: ignore[arg-type]


def _redis_ms(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds * 1000 + micros / 1000


def _charged_ms(client: redis.Redis, key: str, since_ms: float) -> float:
    """How far the token bucket's theoretical arrival time is past `since_ms`: at 60,000 tokens
    a minute, one millisecond is one token."""
    return float(client.get(key) or 0) - since_ms


@pytest.mark.parametrize("settle", [True, False])
def test_the_token_estimate_is_settled_with_the_reported_usage(
    client: redis.Redis, sim: SimulatorHandle, settle: bool
) -> None:
    limiter = RateLimiter(client)
    teacher = _teacher(sim, limiter, ",tpm=60000", settle=settle)  # 1,000 tokens/s: 1 per ms
    request = _request()
    estimate = estimated_tokens(request, teacher.spec)
    before = _redis_ms(client)
    result = teacher.call(request)
    assert result.response is not None
    actual = (result.response.tokens_in or 0) + (result.response.tokens_out or 0)
    assert estimate - actual > 500  # max_tokens is reserved; the answer is far shorter
    charged = _charged_ms(client, "kpdd:rl:sim:gold:tpm", before)
    expected = actual if settle else estimate
    assert expected <= charged <= expected + SLACK_MS


def test_an_error_the_provider_answered_refunds_its_estimate(
    client: redis.Redis, sim: SimulatorHandle
) -> None:
    limiter = RateLimiter(client)
    spec = parse_spec(f"sim:gold+fault=500*1@{sim.url},tpm=60000")
    teacher_client = limited_client_factory(limiter, "sqlite://")(spec)
    before = _redis_ms(client)
    result = teacher_client.call(_request())
    assert result.attempts == 2 and result.response is not None  # a 500, then the answer
    actual = (result.response.tokens_in or 0) + (result.response.tokens_out or 0)
    charged = _charged_ms(client, f"kpdd:rl:sim:{spec.model}:tpm", before)
    assert actual <= charged <= actual + SLACK_MS  # the 500's estimate was refunded


def test_a_wait_longer_than_the_limit_fails_the_call_with_kind_rate_limit_wait(
    client: redis.Redis, sim: SimulatorHandle
) -> None:
    limiter = RateLimiter(client)
    teacher = _teacher(sim, limiter, ",rpm=1", wait_max_s=0.5)
    assert teacher.call(_request(0)).response is not None  # the one request of this minute
    result = teacher.call(_request(1))
    assert result.error is not None and result.error.kind == "rate_limit_wait"
    assert "KPDD_RATE_LIMIT_WAIT_MAX_S" in result.error.message
    assert result.attempts == 0 and not result.error.retryable
    assert sim.stats["requests"] == 1  # nothing was sent for the second


def _call_in_thread(
    teacher: TeacherClient, request: TeacherRequest, setup: object = None
) -> tuple[threading.Thread, list[CallResult]]:
    results: list[CallResult] = []

    def run() -> None:
        if callable(setup):
            setup()
        results.append(teacher.call(request))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results


def test_a_waiting_call_ends_when_the_worker_stops(client: redis.Redis, sim: SimulatorHandle) -> None:
    limiter = RateLimiter(client)
    stopping = threading.Event()
    teacher = _teacher(sim, limiter, ",rpm=1", stopping=stopping)
    teacher.call(_request(0))
    waiter, results = _call_in_thread(teacher, _request(1))
    time.sleep(0.5)
    assert waiter.is_alive()  # waiting for the next minute
    stopping.set()
    waiter.join(10)  # generous: the wait is asked to stop after every slice of at most 1 s
    assert not waiter.is_alive()
    error = results[0].error
    assert error is not None and error.kind == "worker_stopping" and results[0].attempts == 0


def test_a_waiting_call_ends_when_its_job_is_cancelled(client: redis.Redis, sim: SimulatorHandle) -> None:
    limiter = RateLimiter(client)
    teacher = _teacher(sim, limiter, ",rpm=1")
    teacher.call(_request(0))
    cancelled = threading.Event()

    def guard() -> str | None:
        return "job 5 is cancelled" if cancelled.is_set() else None

    waiter, results = _call_in_thread(teacher, _request(1), setup=lambda: CALL_GUARD.set(guard))
    time.sleep(0.5)
    assert waiter.is_alive()
    cancelled.set()
    waiter.join(10)
    assert not waiter.is_alive()
    error = results[0].error
    assert error is not None and error.kind == "job_stopped" and "job 5 is cancelled" in error.message
    assert sim.stats["requests"] == 1


def test_sigterm_wakes_the_waits_and_then_does_what_it_did_before() -> None:
    received: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        runtime = WorkerRuntime(generator=None)  # type: ignore[arg-type]
        runtime.stop_on_sigterm()
        assert not runtime.stopping.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runtime.stopping.is_set() and received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, original)
