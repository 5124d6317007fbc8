"""A global rate limiter: per (provider, model) requests- and tokens-per-minute budgets, shared by
every worker process on every host through one atomic Redis Lua script.

Strategy: GCRA (the generic cell rate algorithm, a token bucket stored as one timestamp). For a
limit of R per minute each unit of cost pushes a "theoretical arrival time" (TAT) forward by
60/R seconds; a take is allowed while TAT - now <= burst, so the long-run rate is exactly R and at
most `burst_seconds` worth of capacity can be spent at once. That stays inside a provider's own
token bucket (whose capacity is a whole minute), so a job paced by this limiter sees no 429s it
caused. A take larger than the burst (a long prompt) is allowed when the bucket is full and then
blocks later takes until it is paid for, so large requests are never starved.

Both metrics are checked and taken in one script call: either both budgets are charged, or
neither is and the caller is told how long to wait. Time comes from the Redis server (`TIME`),
so hosts with skewed clocks share one timeline.

Tokens are reserved before a call from an estimate and settled afterwards with the usage the
provider reported (`settle`), refunding or charging the difference.

On a 429 the caller reports the provider's `Retry-After` with `back_off`: every worker for that
(provider, model) then waits, not just the one that was refused.

Limits are bounded like the teacher options `rpm` and `tpm` (`services.teachers.spec.RPM_RANGE`,
`TPM_RANGE`): a limit of 1e-300 per minute would overflow the script's arithmetic. A wait, however
long, is slept in slices of at most `RateLimiter.max_sleep_s`, and `should_stop` is asked after
every slice, so a cancelled job is heard within a slice.

Storage: keys `{prefix}:{provider}:{model}:{rpm|tpm|pause}`, each expiring once idle. If Redis is
restarted empty, limits start again from a full bucket, which errs by at most one burst.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis

from services.teachers.spec import RPM_RANGE, TPM_RANGE

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local pause = tonumber(redis.call('GET', KEYS[3]) or '0')
if pause > now then
  return {0, tostring(pause - now)}
end
local wait = 0
local new_tat = {}
for i = 1, 2 do
  local interval = tonumber(ARGV[2 * i - 1])   -- ms per unit of cost; 0 = no limit
  local cost = tonumber(ARGV[2 * i])
  if interval > 0 and cost > 0 then
    local burst = tonumber(ARGV[5])
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tat < now then tat = now end
    local excess = tat - now - burst
    if excess > wait then wait = excess end
    new_tat[i] = tat + interval * cost
  end
end
if wait > 0 then
  return {0, tostring(wait)}
end
local ttl = tonumber(ARGV[6])
for i = 1, 2 do
  if new_tat[i] then
    redis.call('SET', KEYS[i], tostring(new_tat[i]), 'PX', math.ceil(new_tat[i] - now + ttl))
  end
end
return {1, '0'}
"""

_ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
tat = tat + tonumber(ARGV[1])
if tat < now then tat = now end
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now + tonumber(ARGV[2])))
return 1
"""

_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local until_ms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then
  redis.call('SET', KEYS[1], tostring(until_ms), 'PX', math.ceil(tonumber(ARGV[1])) + 1000)
end
return 1
"""


@dataclass(slots=True, frozen=True)
class RateLimits:
    """Budgets for one (provider, model). None means unlimited."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    # Capacity that may be spent at once, in seconds of the limit (1.0: one second's worth).
    burst_seconds: float = 1.0

    def __post_init__(self) -> None:
        for name, (low, high) in (("requests_per_minute", RPM_RANGE), ("tokens_per_minute", TPM_RANGE)):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and low <= value <= high):
                raise ValueError(
                    f"{name} must be a finite number from {low:,.0f} to {high:,.0f}, got {value}"
                )
        if not (math.isfinite(self.burst_seconds) and self.burst_seconds >= 0):
            raise ValueError(f"burst_seconds must be a finite number >= 0, got {self.burst_seconds}")

    @property
    def unlimited(self) -> bool:
        return self.requests_per_minute is None and self.tokens_per_minute is None


@dataclass(slots=True, frozen=True)
class Grant:
    """A granted take: what was charged, and how long the caller waited for it."""

    tokens: int
    waited_s: float


class RateLimitTimeout(Exception):
    """`acquire` could not get capacity before its deadline."""


def _interval_ms(per_minute: float | None) -> float:
    return 0.0 if per_minute is None else 60_000.0 / per_minute


class RateLimiter:
    """Shared budgets in Redis. Safe to use from many threads, processes and hosts."""

    def __init__(
        self, client: Redis, prefix: str = "kpdd:rl", idle_ttl_s: float = 300.0, max_sleep_s: float = 1.0
    ) -> None:
        if not (math.isfinite(max_sleep_s) and max_sleep_s > 0):
            raise ValueError(f"max_sleep_s must be a finite number > 0, got {max_sleep_s}")
        self.client = client
        self.prefix = prefix
        self.idle_ttl_ms = idle_ttl_s * 1000
        # The longest one sleep may last: `should_stop` is asked at least this often.
        self.max_sleep_s = max_sleep_s
        self._take = client.register_script(_TAKE)
        self._adjust = client.register_script(_ADJUST)
        self._pause = client.register_script(_PAUSE)

    def _keys(self, provider: str, model: str) -> list[str]:
        base = f"{self.prefix}:{provider}:{model}"
        return [f"{base}:rpm", f"{base}:tpm", f"{base}:pause"]

    def try_acquire(self, provider: str, model: str, limits: RateLimits, tokens: int = 0) -> float:
        """Take one request and `tokens` tokens if both budgets allow: returns 0.0. Otherwise
        charges nothing and returns the seconds to wait before trying again."""
        if limits.unlimited:
            return 0.0
        granted, wait_ms = self._take(
            keys=self._keys(provider, model),
            args=[
                _interval_ms(limits.requests_per_minute),
                1,
                _interval_ms(limits.tokens_per_minute),
                max(0, tokens),
                limits.burst_seconds * 1000,
                self.idle_ttl_ms,
            ],
        )
        return 0.0 if int(granted) == 1 else float(wait_ms) / 1000

    def acquire(
        self,
        provider: str,
        model: str,
        limits: RateLimits,
        tokens: int = 0,
        *,
        timeout_s: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Grant:
        """Block until the budgets allow one request of `tokens` tokens, then take it.

        Waits the time the script says (plus a little jitter so waiting workers do not all
        retry at the same instant), in sleeps of at most `max_sleep_s`. Raises
        `RateLimitTimeout` past `timeout_s`, or when `should_stop()` turns true (a cancelled
        job), which is asked before the first sleep and after every one.
        """
        start = time.monotonic()
        stopped = should_stop or (lambda: False)
        while True:
            wait = self.try_acquire(provider, model, limits, tokens)
            if wait <= 0:
                return Grant(tokens=max(0, tokens), waited_s=time.monotonic() - start)
            if stopped():
                raise RateLimitTimeout("stopped while waiting for rate-limit capacity")
            elapsed = time.monotonic() - start
            if timeout_s is not None and elapsed + wait > timeout_s:
                raise RateLimitTimeout(
                    f"no capacity for {provider}:{model} within {timeout_s:.1f} s (next in {wait:.2f} s)"
                )
            left = wait + random.uniform(0, min(0.05, wait * 0.1))
            while left > 0:
                slice_s = min(left, self.max_sleep_s)
                sleep(slice_s)
                left -= slice_s
                if stopped():
                    raise RateLimitTimeout("stopped while waiting for rate-limit capacity")

    def settle(self, provider: str, model: str, limits: RateLimits, reserved: int, actual: int) -> None:
        """Correct the token budget once the real usage is known (refund or extra charge)."""
        if limits.tokens_per_minute is None or reserved == actual:
            return
        delta_ms = (actual - reserved) * _interval_ms(limits.tokens_per_minute)
        self._adjust(keys=[self._keys(provider, model)[1]], args=[delta_ms, self.idle_ttl_ms])

    def back_off(self, provider: str, model: str, seconds: float) -> None:
        """Pause every taker of (provider, model) for `seconds` (a 429's Retry-After)."""
        if seconds > 0:
            self._pause(keys=[self._keys(provider, model)[2]], args=[seconds * 1000])
