"""The global rate limiter, against the suite's real Redis server.

Assertions are safety properties (never more than the limit allows, whatever the timing) and
exact arithmetic on the stored state; none is a speed measurement.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import pytest
import redis

from tests.servers import RedisServer
from workers.ratelimit import RateLimiter, RateLimits, RateLimitTimeout


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    c = redis.Redis.from_url(redis_server.url())
    c.flushall()
    return c


def test_burst_then_wait(client: redis.Redis) -> None:
    limiter = RateLimiter(client)
    limits = RateLimits(requests_per_minute=60, burst_seconds=2.0)  # 1/s, 2 s of burst
    # A full bucket admits burst/interval + 1 takes at once, then asks to wait about 1 s.
    assert [limiter.try_acquire("openai", "m", limits) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.try_acquire("openai", "m", limits)
    assert 0.9 < wait <= 1.0
    # A refused take charges nothing: asking again gives the same (smaller) wait.
    assert limiter.try_acquire("openai", "m", limits) <= wait


def test_models_and_providers_are_independent(client: redis.Redis) -> None:
    limiter = RateLimiter(client)
    limits = RateLimits(requests_per_minute=1, burst_seconds=0)
    assert limiter.try_acquire("openai", "a", limits) == 0.0
    assert limiter.try_acquire("openai", "a", limits) > 50
    assert limiter.try_acquire("openai", "b", limits) == 0.0
    assert limiter.try_acquire("anthropic", "a", limits) == 0.0


def test_tokens_and_requests_are_taken_together_or_not_at_all(client: redis.Redis) -> None:
    limiter = RateLimiter(client)
    limits = RateLimits(requests_per_minute=600, tokens_per_minute=6000, burst_seconds=1.0)
    # 100 tokens/s with 1 s burst: a 150-token take is allowed on a full bucket (debt)...
    assert limiter.try_acquire("p", "m", limits, tokens=150) == 0.0
    # ...and then the token budget, not the request budget, makes the next one wait ~0.5 s+.
    wait = limiter.try_acquire("p", "m", limits, tokens=10)
    assert 0.4 < wait < 0.7
    rpm_tat = float(client.get("kpdd:rl:p:m:rpm") or 0)
    # The refused take did not charge the request budget either.
    assert limiter.try_acquire("p", "m", limits, tokens=10) > 0
    assert float(client.get("kpdd:rl:p:m:rpm") or 0) == rpm_tat


def test_settle_refunds_unused_tokens(client: redis.Redis) -> None:
    limiter = RateLimiter(client)
    limits = RateLimits(tokens_per_minute=60_000, burst_seconds=0.0)  # 1000 tokens/s
    assert limiter.try_acquire("p", "m", limits, tokens=2000) == 0.0
    assert limiter.try_acquire("p", "m", limits, tokens=1) > 1.5
    limiter.settle("p", "m", limits, reserved=2000, actual=200)  # used far less than estimated
    assert limiter.try_acquire("p", "m", limits, tokens=1) < 0.3


def test_back_off_pauses_every_taker(client: redis.Redis) -> None:
    a, b = RateLimiter(client), RateLimiter(redis.Redis(connection_pool=client.connection_pool))
    limits = RateLimits(requests_per_minute=6000)
    a.back_off("openai", "m", 5.0)
    assert 4.0 < b.try_acquire("openai", "m", limits) <= 5.0
    a.back_off("openai", "m", 1.0)  # a shorter Retry-After never shortens a longer pause
    assert b.try_acquire("openai", "m", limits) > 3.0


def test_acquire_gives_up_at_its_deadline(client: redis.Redis) -> None:
    limiter = RateLimiter(client)
    limits = RateLimits(requests_per_minute=1, burst_seconds=0)
    limiter.acquire("p", "m", limits)
    with pytest.raises(RateLimitTimeout, match=r"within 0\.5 s"):
        limiter.acquire("p", "m", limits, timeout_s=0.5)
    with pytest.raises(RateLimitTimeout, match="stopped"):
        limiter.acquire("p", "m", limits, should_stop=lambda: True)


def test_unlimited_never_touches_redis(client: redis.Redis) -> None:
    limiter = RateLimiter(client)
    for _ in range(100):
        assert limiter.try_acquire("p", "m", RateLimits()) == 0.0
    assert client.dbsize() == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("requests_per_minute", 0),
        ("requests_per_minute", 1e-300),  # used to overflow the script's arithmetic
        ("requests_per_minute", 0.01),  # used to block a worker thread for 100 minutes a take
        ("requests_per_minute", float("inf")),
        ("requests_per_minute", float("nan")),
        ("requests_per_minute", 1e8),
        ("tokens_per_minute", 99),
        ("tokens_per_minute", float("nan")),
        ("tokens_per_minute", 1e11),
    ],
)
def test_invalid_limits_are_rejected(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{field} must be a finite number from"):
        RateLimits(**{field: value})


def test_limits_at_their_bounds_are_accepted() -> None:
    assert not RateLimits(requests_per_minute=1, tokens_per_minute=100).unlimited
    assert not RateLimits(requests_per_minute=10_000_000, tokens_per_minute=10_000_000_000).unlimited
    with pytest.raises(ValueError, match="burst_seconds"):
        RateLimits(requests_per_minute=1, burst_seconds=float("inf"))


def test_a_long_wait_is_slept_in_bounded_slices_asking_to_stop_after_each(client: redis.Redis) -> None:
    limiter = RateLimiter(client)  # slices of at most 1 s by default
    limits = RateLimits(requests_per_minute=1, burst_seconds=0)  # the next take waits ~60 s
    limiter.acquire("p", "m", limits)
    slept: list[float] = []
    asked = 0

    def stop_after_three_slices() -> bool:
        nonlocal asked
        asked += 1
        return len(slept) >= 3

    with pytest.raises(RateLimitTimeout, match="stopped"):
        limiter.acquire("p", "m", limits, should_stop=stop_after_three_slices, sleep=slept.append)
    assert slept == [1.0, 1.0, 1.0]  # not one 60 s sleep
    limiter = RateLimiter(client, max_sleep_s=0.25)
    slept.clear()
    with pytest.raises(RateLimitTimeout, match="stopped"):
        limiter.acquire("p", "m", limits, should_stop=lambda: len(slept) >= 2, sleep=slept.append)
    assert slept == [0.25, 0.25]
    assert asked == 4  # before the first sleep, and after every slice


def test_a_waiting_thread_returns_promptly_when_its_job_is_cancelled(client: redis.Redis) -> None:
    limiter = RateLimiter(client)
    limits = RateLimits(requests_per_minute=1, burst_seconds=0)
    limiter.acquire("p", "m", limits)
    cancelled = threading.Event()
    outcome: list[BaseException] = []

    def take() -> None:
        try:
            limiter.acquire("p", "m", limits, should_stop=cancelled.is_set)
        except RateLimitTimeout as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=take, daemon=True)
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()  # waiting for the ~60 s the budget asks
    cancelled.set()
    waiter.join(timeout=10)  # generous: a slice is 1 s; unsliced, the sleep lasted the whole 60 s
    assert not waiter.is_alive()
    assert len(outcome) == 1 and "stopped" in str(outcome[0])


def test_the_sleep_slice_must_be_positive(client: redis.Redis) -> None:
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="max_sleep_s"):
            RateLimiter(client, max_sleep_s=bad)


def _hammer(url: str, seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    limiter = RateLimiter(redis.Redis.from_url(url))
    limits = RateLimits(requests_per_minute=1200, burst_seconds=0.5)  # 20/s
    granted = 0
    end = time.monotonic() + seconds
    while True:
        try:
            limiter.acquire("sim", "m", limits, timeout_s=max(0.0, end - time.monotonic()))
        except RateLimitTimeout:
            break
        granted += 1
    out.put((granted, time.monotonic()))


def test_many_processes_never_exceed_the_shared_limit(client: redis.Redis, redis_server: RedisServer) -> None:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    seconds = 3.0
    start = time.monotonic()
    procs = [ctx.Process(target=_hammer, args=(redis_server.url(), seconds, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    total = sum(g for g, _ in results)
    elapsed = max(t for _, t in results) - start  # includes process start-up: an upper bound
    # GCRA: at most elapsed * rate + burst * rate + 1 grants, whatever the interleaving.
    assert total <= elapsed * 20 + 0.5 * 20 + 1
    assert all(g > 0 for g, _ in results)  # nobody starved
