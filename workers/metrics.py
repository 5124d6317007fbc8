"""The worker's own Prometheus metrics, live counters of what its processes do (the API's
`/metrics` reports the database's totals; these show one worker fleet's activity as it happens).

`kpdd worker --metrics-port N` (or `KPDD_WORKER_METRICS_PORT`) serves them from the Celery main
process in prometheus_client's multiprocess mode: every pool process writes its counters to files
under `PROMETHEUS_MULTIPROC_DIR` (a fresh folder `kpdd worker` makes), and the main process sums
them at each scrape. Without a port nothing is served and the counters cost nothing but memory.

- `kpdd_worker_chunks_total{outcome}`: chunks done, skipped, or with failed problems
- `kpdd_worker_rationales_total{result}`: rationales made (valid, not_valid)
- `kpdd_worker_teacher_calls_total{provider,model}`: answers paid for now
- `kpdd_worker_replayed_calls_total`: answers replayed from the response cache
- `kpdd_worker_teacher_tokens_total{provider,model,direction}`: tokens the providers reported
- `kpdd_worker_teacher_errors_total{provider,model,kind}`: failed attempts by kind (429s are
  `rate_limit`)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from prometheus_client import Counter

if TYPE_CHECKING:
    from services.generation.execute import ChunkReport

CHUNKS = Counter("kpdd_worker_chunks", "Chunks processed by this worker fleet", ["outcome"])
RATIONALES = Counter("kpdd_worker_rationales", "Rationales made", ["result"])
CALLS = Counter("kpdd_worker_teacher_calls", "Teacher answers paid for now", ["provider", "model"])
REPLAYED = Counter("kpdd_worker_replayed_calls", "Teacher answers replayed from the cache")
TOKENS = Counter(
    "kpdd_worker_teacher_tokens", "Tokens reported by teachers", ["provider", "model", "direction"]
)
ERRORS = Counter(
    "kpdd_worker_teacher_errors", "Failed teacher attempts by kind", ["provider", "model", "kind"]
)


def count_chunk(report: ChunkReport) -> None:
    outcome = "skipped" if report.skipped else ("with_failures" if report.failed else "done")
    CHUNKS.labels(outcome).inc()
    RATIONALES.labels("valid").inc(report.valid)
    RATIONALES.labels("not_valid").inc(report.rationales - report.valid)
    REPLAYED.inc(report.cached_calls)


def count_answer(provider: str, model: str, tokens_in: int | None, tokens_out: int | None) -> None:
    CALLS.labels(provider, model).inc()
    if tokens_in is not None:
        TOKENS.labels(provider, model, "in").inc(tokens_in)
    if tokens_out is not None:
        TOKENS.labels(provider, model, "out").inc(tokens_out)


def count_error(provider: str, model: str, kind: str) -> None:
    ERRORS.labels(provider, model, kind).inc()


def serve(port: int) -> None:
    """Serve the summed counters of every pool process on `port` (the Celery main process)."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, registry=registry)


def process_gone(pid: int | None = None) -> None:
    """A pool process ends: its live gauges are dropped (counters are kept and still summed)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())
