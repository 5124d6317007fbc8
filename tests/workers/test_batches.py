"""Batch jobs end to end with real components: the official `openai` and `anthropic` SDKs talk to
the simulator's batch endpoints over HTTP; `kpdd worker` processes (Celery, prefork) run chunks
and the batch poller against the suite's Postgres and Redis.

Every test ends with exact counts: one rationale per (problem, teacher, mode, sample), one
ledger row per paid request, and the simulator's own count of batch lines proves that no request
was sent again after it had been answered.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.models import BatchRequest, ProviderBatch, Rationale, TeacherCall
from tests.workers.cluster import Cluster, assert_exact, generate, ingest

PRICE = {"input": 2.0, "output": 8.0}  # per million tokens; batch: half of it


def _setup(cluster: Cluster, **env: str) -> None:
    prices = cluster.tmp / "prices.json"
    prices.write_text(
        json.dumps({"models": {"openai:gold": PRICE, "anthropic:gold": PRICE}}), encoding="utf-8"
    )
    values = {
        "OPENAI_API_KEY": "sk-test-batch-key-0001",
        "ANTHROPIC_API_KEY": "sk-ant-test-batch-key-0001",
        "KPDD_PRICES_FILE": str(prices),
        "KPDD_BATCH_POLL_INTERVAL_S": "0.3",
        "KPDD_BATCH_SETTLE_S": "0.5",
        **env,
    }
    for key, value in values.items():
        cluster.env[key] = value
        cluster.monkeypatch.setenv(key, value)
    from services.config import get_settings

    get_settings.cache_clear()


def _batch_stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/_sim/batch-stats", timeout=10).json())


def _session(cluster: Cluster) -> Session:
    return Session(create_engine(cluster.db_url))


def _status(cluster: Cluster, job: int) -> dict[str, Any]:
    code, out = cluster.kpdd("status", str(job), "--json")
    assert code in (0, 1), out
    return dict(orjson.loads(out))


def _wait_batch(cluster: Cluster, state: str, timeout: float = 60) -> ProviderBatch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _session(cluster) as session:
            row = session.scalar(select(ProviderBatch).where(ProviderBatch.state == state).limit(1))
        if row is not None:
            return row
        time.sleep(0.1)
    raise AssertionError(f"no batch reached {state} in {timeout} s")


def _ledger(cluster: Cluster) -> tuple[int, int, int]:
    """Ledger rows, distinct fingerprints, rows paid through a batch."""
    with _session(cluster) as session:
        rows, distinct, batched = session.execute(
            select(
                func.count(),
                func.count(func.distinct(TeacherCall.fingerprint)),
                func.count(TeacherCall.batch_id),
            )
        ).one()
    return int(rows), int(distinct), int(batched)


def test_an_openai_batch_job_runs_end_to_end_at_half_the_price(cluster: Cluster, datasets_dir: Path) -> None:
    _setup(cluster)
    ingest(cluster, datasets_dir, 12)
    url = cluster.simulator(datasets_dir, batch_delay_s=1.0)
    cluster.start_worker()
    job = generate(
        cluster,
        "--teacher",
        f"openai:gold@{url}/v1",
        "--transport",
        "batch",
        "--mode",
        "cot",
        "--chunk-size",
        "4",
    )
    assert cluster.wait(job, timeout=120) == "completed"
    assert_exact(cluster, job, problems=12, per_problem=1)
    assert _ledger(cluster) == (12, 12, 12)  # every answer paid once, through a batch
    stats = _batch_stats(url)
    assert stats["lines"] == stats["distinct_custom_ids"] == 12 and stats["resubmitted_after_success"] == 0
    assert cluster.sims[0].stats["requests"] == 0  # type: ignore[attr-defined]  # no online call
    status = _status(cluster, job)
    batches = status["batches"]
    assert batches["answered"] == batches["requests"] == 12
    assert set(batches["by_state"]) == {"completed"}
    cost, online = Decimal(batches["cost_usd"]), Decimal(batches["online_cost_usd"])
    assert cost > 0 and abs(online - 2 * cost) <= Decimal("0.00000002") * 12
    assert Decimal(batches["saved_usd"]) == online - cost
    with _session(cluster) as session:
        rows = session.scalars(select(TeacherCall)).all()
        assert all(r.batch_id is not None and r.status == "ok" for r in rows)
        assert sum(Decimal(r.cost_usd) for r in rows) == cost
        # each request carried its fingerprint as its custom id
        assert {r.fingerprint for r in session.scalars(select(BatchRequest))} == {r.fingerprint for r in rows}


def test_an_anthropic_staged_batch_job_runs_one_stage_per_round(cluster: Cluster, datasets_dir: Path) -> None:
    _setup(cluster)
    ingest(cluster, datasets_dir, 8)
    url = cluster.simulator(datasets_dir, batch_delay_s=0.5)
    cluster.start_worker()
    job = generate(
        cluster,
        "--teacher",
        f"anthropic:gold@{url},batch=true",
        "--mode",
        "pot",
        "--stage-mode",
        "staged",
        "--chunk-size",
        "4",
    )
    assert cluster.wait(job, timeout=180) == "completed"
    assert_exact(cluster, job, problems=8, per_problem=1, calls_per_rationale=3)
    with _session(cluster) as session:
        valid = session.scalar(select(func.count()).where(Rationale.verdict == "valid"))
        batches = session.scalars(select(ProviderBatch).order_by(ProviderBatch.id)).all()
    assert valid == 8
    assert len(batches) >= 3 and all(b.provider == "anthropic" and b.state == "ended" for b in batches)
    stats = _batch_stats(url)
    assert stats["lines"] == stats["distinct_custom_ids"] == 24 and stats["resubmitted_after_success"] == 0


def test_a_mixed_job_runs_its_online_teacher_at_once_and_its_batch_teacher_by_batch(
    cluster: Cluster, datasets_dir: Path
) -> None:
    _setup(cluster)
    ingest(cluster, datasets_dir, 10)
    url = cluster.simulator(datasets_dir, batch_delay_s=1.0)
    cluster.start_worker()
    job = generate(
        cluster,
        "--teacher",
        f"openai:gold@{url}/v1,batch=true",
        "--teacher",
        f"anthropic:gold@{url}",
        "--mode",
        "cot",
        "--chunk-size",
        "5",
    )
    assert cluster.wait(job, timeout=120) == "completed"
    assert_exact(cluster, job, problems=10, per_problem=2)
    with _session(cluster) as session:
        by_provider = dict(
            session.execute(
                select(TeacherCall.provider, func.count(TeacherCall.batch_id)).group_by(TeacherCall.provider)
            ).all()
        )
    assert by_provider == {"openai": 10, "anthropic": 0}  # batch ids only on the batch teacher's calls
    assert cluster.sims[0].stats["anthropic"] == 10  # type: ignore[attr-defined]
    assert _batch_stats(url)["lines"] == 10


def test_a_stack_restarted_while_its_batch_is_in_flight_loses_nothing_and_sends_nothing_twice(
    cluster: Cluster, datasets_dir: Path
) -> None:
    _setup(cluster)
    ingest(cluster, datasets_dir, 12)
    url = cluster.simulator(datasets_dir, batch_delay_s=6.0)
    first = cluster.start_worker()
    job = generate(
        cluster,
        "--teacher",
        f"openai:gold@{url}/v1",
        "--transport",
        "batch",
        "--mode",
        "cot",
        "--chunk-size",
        "3",
    )
    _wait_batch(cluster, "in_progress")
    cluster.kill_worker(first)
    redis.Redis.from_url(cluster.redis.url()).flushall()  # the broker restarted empty too
    assert cluster.job_counts(job).get("pending") == 12
    cluster.start_worker()
    assert cluster.wait(job, timeout=120) == "completed"
    assert_exact(cluster, job, problems=12, per_problem=1)
    assert _ledger(cluster) == (12, 12, 12)
    stats = _batch_stats(url)
    assert stats["lines"] == stats["distinct_custom_ids"] == 12 and stats["resubmitted_after_success"] == 0


def test_an_expired_batch_sends_again_only_what_it_did_not_answer(
    cluster: Cluster, datasets_dir: Path
) -> None:
    _setup(cluster, KPDD_BATCH_MAX_SUBMISSIONS="8")
    ingest(cluster, datasets_dir, 12)
    url = cluster.simulator(datasets_dir, batch_delay_s=2.0, batch_expire_after_s=1.0)
    cluster.start_worker()
    job = generate(
        cluster,
        "--teacher",
        f"openai:gold@{url}/v1",
        "--transport",
        "batch",
        "--mode",
        "cot",
        "--chunk-size",
        "6",
    )
    assert cluster.wait(job, timeout=180) == "completed"
    assert_exact(cluster, job, problems=12, per_problem=1)
    with _session(cluster) as session:
        batches = session.scalars(select(ProviderBatch).order_by(ProviderBatch.id)).all()
    expired = sum(b.expired for b in batches)
    assert expired > 0 and batches[0].expired > 0 and batches[0].succeeded > 0
    assert sum(b.succeeded for b in batches) == 12
    stats = _batch_stats(url)
    assert stats["resubmitted_after_success"] == 0
    assert stats["lines"] == 12 + expired  # only the expired requests were sent again
    assert _status(cluster, job)["batches"]["by_state"].get("expired", 0) >= 1


def test_partly_failed_batches_resend_the_failed_requests(cluster: Cluster, datasets_dir: Path) -> None:
    _setup(cluster, KPDD_BATCH_MAX_SUBMISSIONS="10")
    ingest(cluster, datasets_dir, 16)
    url = cluster.simulator(datasets_dir, batch_delay_s=0.5, batch_error_rate=0.3, seed=7)
    cluster.start_worker()
    job = generate(
        cluster,
        "--teacher",
        f"anthropic:gold@{url}",
        "--transport",
        "batch",
        "--mode",
        "cot",
        "--chunk-size",
        "8",
    )
    assert cluster.wait(job, timeout=180) == "completed"
    assert_exact(cluster, job, problems=16, per_problem=1)
    with _session(cluster) as session:
        errored = sum(session.scalars(select(ProviderBatch.errored)))
    assert errored > 0
    stats = _batch_stats(url)
    assert stats["lines"] == 16 + errored and stats["resubmitted_after_success"] == 0


def test_cancelling_a_batch_job_cancels_its_provider_batch(cluster: Cluster, datasets_dir: Path) -> None:
    _setup(cluster)
    ingest(cluster, datasets_dir, 12)
    url = cluster.simulator(datasets_dir, batch_delay_s=60.0)
    cluster.start_worker()
    job = generate(
        cluster,
        "--teacher",
        f"openai:gold@{url}/v1",
        "--transport",
        "batch",
        "--mode",
        "cot",
        "--chunk-size",
        "6",
    )
    _wait_batch(cluster, "in_progress")
    time.sleep(1.0)
    code, out = cluster.kpdd("cancel", str(job), "--json")
    assert code == 0, out
    batch = _wait_batch(cluster, "cancelled", timeout=30)
    assert batch.provider_status in ("cancelled", "cancelling")
    with _session(cluster) as session:
        rationales = session.scalar(select(func.count()).select_from(Rationale))
        paid = session.scalar(select(func.count()).where(TeacherCall.batch_id.is_not(None)))
        states = dict(
            session.execute(select(BatchRequest.state, func.count()).group_by(BatchRequest.state)).all()
        )
    assert rationales == 0  # a cancelled job writes nothing
    assert paid == batch.succeeded  # what the provider answered before cancelling is in the ledger
    assert states.get("done", 0) == batch.succeeded and states.get("failed", 0) == 12 - batch.succeeded
    assert _status(cluster, job)["status"] == "cancelled"
    assert _batch_stats(url)["lines"] == 12
