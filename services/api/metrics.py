"""`GET /metrics`: Prometheus metrics of the whole deployment, read from Postgres at scrape time
(calls by provider, model and status; 429s; tokens; spend; rationales by verdict; sandbox verdicts
by kind; jobs by status; queue depth in Redis; training tokens/s), so every API replica reports
the same figures and nothing is lost when a worker restarts. Worker processes' own live counters
are Flower's and Celery's (see README, "Run it as a service")."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db.queries import metrics as q
from services.generation.dispatch import DEFAULT_QUEUE
from services.training.dispatch import TRAINING_QUEUE


class DatabaseCollector(Collector):
    def __init__(self, engine: Engine, broker_url: str | None) -> None:
        self.engine = engine
        self.broker_url = broker_url

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with Session(self.engine) as session:
            calls = q.call_totals(session)
            limited = q.rate_limited_calls(session)
            rationales = q.rationale_totals(session)
            jobs = q.job_totals(session)
            speeds = q.live_run_speeds(session)
        count = CounterMetricFamily(
            "kpdd_teacher_calls", "Distinct teacher requests recorded", labels=["provider", "model", "status"]
        )
        tokens = CounterMetricFamily(
            "kpdd_teacher_tokens", "Tokens reported by teachers", labels=["provider", "model", "direction"]
        )
        spend = CounterMetricFamily(
            "kpdd_teacher_spend_usd", "Dollars paid to teachers", labels=["provider", "model"]
        )
        by_teacher: dict[tuple[str, str], list[float]] = {}
        for provider, model, status, n, t_in, t_out, usd in calls:
            count.add_metric([provider, model, status], n)
            acc = by_teacher.setdefault((provider, model), [0.0, 0.0, 0.0])
            acc[0] += t_in
            acc[1] += t_out
            acc[2] += usd
        for (provider, model), (sum_in, sum_out, dollars) in by_teacher.items():
            tokens.add_metric([provider, model, "in"], sum_in)
            tokens.add_metric([provider, model, "out"], sum_out)
            spend.add_metric([provider, model], dollars)
        yield count
        yield tokens
        yield spend
        rate = CounterMetricFamily(
            "kpdd_teacher_rate_limited_calls", "Calls that ended on HTTP 429", labels=["provider", "model"]
        )
        for provider, model, n in limited:
            rate.add_metric([provider, model], n)
        yield rate
        verdicts = CounterMetricFamily(
            "kpdd_rationales", "Rationales by mode and verdict", labels=["mode", "verdict"]
        )
        sandbox = CounterMetricFamily(
            "kpdd_sandbox_verdicts", "PoT rationales by verdict kind", labels=["kind"]
        )
        summed: dict[tuple[str, str], int] = {}
        for mode, verdict, kind, n in rationales:
            summed[(mode, verdict)] = summed.get((mode, verdict), 0) + n
            if mode == "pot":
                sandbox.add_metric([kind or "none"], n)
        for (mode, verdict), n in sorted(summed.items()):
            verdicts.add_metric([mode, verdict], n)
        yield verdicts
        yield sandbox
        statuses = GaugeMetricFamily("kpdd_jobs", "Generation jobs by status", labels=["status"])
        for status, n in jobs:
            statuses.add_metric([status], n)
        yield statuses
        speed = GaugeMetricFamily(
            "kpdd_training_tokens_per_second_per_gpu", "Live training runs", labels=["run"]
        )
        for run_id, value in speeds:
            speed.add_metric([str(run_id)], value)
        yield speed
        depth = GaugeMetricFamily("kpdd_queue_depth", "Messages waiting in the broker", labels=["queue"])
        for queue, n in self._queue_depths():
            depth.add_metric([queue], n)
        yield depth

    def _queue_depths(self) -> list[tuple[str, int]]:
        if not self.broker_url or not self.broker_url.startswith(("redis://", "rediss://")):
            return []
        import redis

        try:
            client = redis.Redis.from_url(self.broker_url, socket_timeout=2, socket_connect_timeout=2)
            try:
                return [(queue, int(client.llen(queue))) for queue in (DEFAULT_QUEUE, TRAINING_QUEUE)]  # type: ignore[arg-type]
            finally:
                client.close()
        except redis.RedisError:
            return []  # the broker is down: the depth is unknown, not zero
