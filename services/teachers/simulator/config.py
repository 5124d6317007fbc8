"""`SimulatorConfig`: everything the teacher simulator can be told, checked on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.teachers.simulator.bank import CorpusSource
from services.teachers.simulator.faults import FaultRates

LatencyDist = Literal["fixed", "uniform", "normal", "lognormal"]
LATENCY_DISTS: tuple[LatencyDist, ...] = ("fixed", "uniform", "normal", "lognormal")


@dataclass(slots=True)
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port (see the handle's / the ready line's `url`)
    seed: int = 0  # seeds fault draws and latency samples
    # Latency of a model answer: `latency_ms` on average, spread by `latency_jitter_ms` according
    # to `latency_dist` (fixed: no spread; uniform: mean +- jitter; normal: sd = jitter, cut at 0;
    # lognormal: mean and sd as given, a long right tail), plus `ms_per_output_token` per
    # completion token. Errors (401, 400, 429) are answered at once.
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    latency_dist: LatencyDist = "normal"
    ms_per_output_token: float = 0.0
    # Per-model limits (0: none), enforced with 429 + Retry-After. With `workers` > 1 each worker
    # process enforces limit / workers on the connections it gets: approximate.
    rpm: float = 0.0
    tpm: float = 0.0
    faults: FaultRates = field(default_factory=FaultRates)
    # Retry-After of an injected 429 (fault `429`); `retry-after-ms` carries it exactly.
    fault_retry_after_s: float = 1.0
    # A hung request answers 504 after this long if the client has not given up by then.
    hang_max_s: float = 600.0
    corpora: list[CorpusSource] = field(default_factory=list)
    from_db: bool = False
    database_url: str | None = None  # for from_db; None: the configured kpdd database
    workers: int = 1
    # Batch APIs (OpenAI Batch, Anthropic Message Batches; see `batches`). A batch ends
    # `batch_delay_s` after its creation. `batch_error_rate` of its requests are answered with a
    # retryable server error, drawn from the seed, the batch id and the request's custom_id (so a
    # resubmission in another batch usually succeeds). With `batch_expire_after_s` (None: never)
    # below the delay the batch expires at that age: its first floor(n * expire / delay) requests
    # (in file order) are answered, the rest expired. Batch state (files, batches, results) lives
    # in `batch_dir`, shared by every worker; None: a temporary directory made by whoever starts
    # the workers and removed when they stop.
    batch_delay_s: float = 1.0
    batch_error_rate: float = 0.0
    batch_expire_after_s: float | None = None
    batch_dir: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        for name in ("latency_ms", "latency_jitter_ms", "ms_per_output_token", "rpm", "tpm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.latency_dist not in LATENCY_DISTS:
            raise ValueError(f"latency_dist must be one of {', '.join(LATENCY_DISTS)}")
        if self.fault_retry_after_s < 0:
            raise ValueError("fault_retry_after_s must not be negative")
        if self.hang_max_s <= 0:
            raise ValueError("hang_max_s must be positive")
        if not 1 <= self.workers <= 256:
            raise ValueError("workers must be between 1 and 256")
        if self.batch_delay_s < 0:
            raise ValueError("batch_delay_s must not be negative")
        if not 0.0 <= self.batch_error_rate <= 1.0:
            raise ValueError("batch_error_rate must be between 0 and 1")
        if self.batch_expire_after_s is not None and self.batch_expire_after_s < 0:
            raise ValueError("batch_expire_after_s must not be negative")
