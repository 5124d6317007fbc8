"""Requests-per-minute and tokens-per-minute limits, enforced per model with token buckets.

Each (model, metric) has a bucket holding up to one minute's allowance, full at start and
refilled continuously (limit / 60 per second). A request takes 1 from the request bucket and its
token cost (prompt tokens + the completion it is about to get) from the token bucket, both or
neither. When either is short, the request is refused with the wait until both would suffice:
that is the `Retry-After` the server sends. A request that costs more tokens than a whole
minute's allowance can never pass: `TokenLimitResult.too_large` says so (the server answers 400).

Not thread-safe: one limiter per event loop / server process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    capacity: float
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.capacity / 60.0)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        deficit = amount - self.level
        return 0.0 if deficit <= 0 else deficit * 60.0 / self.capacity


@dataclass(slots=True, frozen=True)
class LimitResult:
    allowed: bool
    retry_after_s: float = 0.0  # when refused: seconds until the request would pass
    too_large: bool = False
    metric: str = ""  # "requests" or "tokens": which limit refused
    remaining_requests: int | None = None
    remaining_tokens: int | None = None


class RateLimiter:
    """Token buckets per model. A limit of 0 or None means unlimited."""

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rpm = rpm or 0.0
        self.tpm = tpm or 0.0
        self.clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rpm > 0 or self.tpm > 0

    def _bucket(self, model: str, metric: str, capacity: float, now: float) -> _Bucket:
        key = (model, metric)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(capacity, capacity, now)
        else:
            bucket.refill(now)
        return bucket

    def take(self, model: str, tokens: int) -> LimitResult:
        """Take one request and `tokens` tokens for `model`, or say how long to wait."""
        if not self.enabled:
            return LimitResult(True)
        now = self.clock()
        requests = self._bucket(model, "requests", self.rpm, now) if self.rpm > 0 else None
        token_bucket = self._bucket(model, "tokens", self.tpm, now) if self.tpm > 0 else None
        if token_bucket is not None and tokens > token_bucket.capacity:
            return LimitResult(False, too_large=True, metric="tokens")
        wait_requests = requests.wait_for(1.0) if requests is not None else 0.0
        wait_tokens = token_bucket.wait_for(tokens) if token_bucket is not None else 0.0
        if wait_requests > 0 or wait_tokens > 0:
            metric = "requests" if wait_requests >= wait_tokens else "tokens"
            return LimitResult(
                False,
                retry_after_s=max(wait_requests, wait_tokens),
                metric=metric,
                remaining_requests=int(requests.level) if requests is not None else None,
                remaining_tokens=int(token_bucket.level) if token_bucket is not None else None,
            )
        if requests is not None:
            requests.level -= 1.0
        if token_bucket is not None:
            token_bucket.level -= tokens
        return LimitResult(
            True,
            remaining_requests=int(requests.level) if requests is not None else None,
            remaining_tokens=int(token_bucket.level) if token_bucket is not None else None,
        )

    def reset(self) -> None:
        self._buckets.clear()
