"""Counters of what the simulator did, readable at `GET /_sim/stats` and from a thread handle.

Counters live in a flat array of 64-bit integers, one row per worker process, so with
`--workers N` (processes sharing one port) every worker writes only its own row of a shared
array and any worker can answer the stats endpoint with the sums. No locks: one writer per row.
"""

from __future__ import annotations

from array import array
from collections.abc import MutableSequence

COUNTERS: tuple[str, ...] = (
    "requests",  # model requests received (POST to a model endpoint), any outcome
    "answered",  # 200 answers sent
    "openai",
    "anthropic",
    "rate_limited",  # 429 sent by the RPM/TPM limits
    "too_large",  # 400: one request costs more tokens than a minute's allowance
    "auth_failed",  # 401
    "bad_request",  # other 400s
    "not_found",  # unknown path or method
    "fault_429",
    "fault_500",
    "fault_hang",
    "fault_wrong",
    "fault_malformed",
    "fault_truncate",
    "fault_refusal",
    "length_limited",  # answers cut by the request's own max_tokens
    "unknown_question",  # 422: requests refused, their problem unknown (or known without a gold)
    "not_kpdd_prompt",  # requests without a `Problem:` marker (answered or refused)
    "prompt_tokens",
    "completion_tokens",
    "hanging",  # gauge: hung requests not yet given up
    "batches_created",  # batches accepted (either provider; a batch that failed validation too)
    "batches_cancelled",  # cancellations that took effect (the batch had not ended)
    "batches_expired",  # batches that ended by expiring
    "batch_lines",  # requests received in accepted batches
    "batch_lines_answered",  # batch requests answered successfully (results computed)
    "batch_lines_errored",  # batch requests answered with an error (4xx, 422, drawn 5xx)
)
_INDEX = {name: i for i, name in enumerate(COUNTERS)}


class Stats:
    """One worker's view: increments its own row, reads the sum of all rows."""

    def __init__(
        self, storage: MutableSequence[int] | None = None, worker: int = 0, workers: int = 1
    ) -> None:
        self.width = len(COUNTERS)
        self.storage: MutableSequence[int] = storage if storage is not None else array("q", [0] * self.width)
        self.offset = worker * self.width
        self.workers = workers

    def add(self, name: str, amount: int = 1) -> None:
        self.storage[self.offset + _INDEX[name]] += amount

    def snapshot(self) -> dict[str, int]:
        totals = [0] * self.width
        for row in range(self.workers):
            base = row * self.width
            for i in range(self.width):
                totals[i] += self.storage[base + i]
        out = dict(zip(COUNTERS, totals, strict=True))
        out["workers"] = self.workers
        return out

    def reset(self) -> None:
        for i in range(len(self.storage)):
            if COUNTERS[i % self.width] != "hanging":
                self.storage[i] = 0


def shared_storage(workers: int) -> MutableSequence[int]:
    """A zeroed array for `workers` rows in shared memory (inherited by forked workers)."""
    from multiprocessing.sharedctypes import RawArray

    return RawArray("q", workers * len(COUNTERS))
