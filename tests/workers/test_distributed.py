"""Distributed generation against real components: the suite's private Postgres and Redis,
`kpdd worker` processes (Celery, prefork), and the teacher simulator over HTTP.

Every test ends by asserting exact counts: every problem in a terminal state, exactly one
rationale per identity, and exactly one ledger row per distinct teacher request.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.models import Rationale, TeacherCall
from services.cli.main import main
from services.config import get_settings
from services.teachers.simulator.faults import FaultRates
from tests.servers import PostgresServer
from tests.workers.cluster import Cluster, assert_exact, generate, ingest


def test_two_workers_share_a_job(cluster: Cluster, datasets_dir: Path) -> None:
    ingest(cluster, datasets_dir, 40)
    url = cluster.simulator(datasets_dir)
    cluster.start_worker()
    cluster.start_worker()
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "both", "--chunk-size", "4")
    assert cluster.wait(job) == "completed"
    assert_exact(cluster, job, problems=40, per_problem=2)
    assert cluster.job_counts(job) == {"done": 40}


def test_worker_killed_mid_chunk_is_redelivered_and_completed(cluster: Cluster, datasets_dir: Path) -> None:
    ingest(cluster, datasets_dir, 24)
    url = cluster.simulator(datasets_dir, latency_ms=150)
    victim = cluster.start_worker()
    job = generate(
        cluster, "--teacher", f"sim:gold@{url}", "--mode", "cot", "--samples", "2", "--chunk-size", "12"
    )
    cluster.wait_for_rationales(4)
    cluster.kill_worker(victim)
    assert cluster.job_counts(job).get("pending", 0) > 0  # killed mid-job
    cluster.start_worker()  # the unacked chunk comes back after the visibility timeout
    assert cluster.wait(job, timeout=150) == "completed"
    assert_exact(cluster, job, problems=24, per_problem=2)


def test_redis_restarted_empty_then_resume_finishes_the_job(cluster: Cluster, datasets_dir: Path) -> None:
    ingest(cluster, datasets_dir, 30)
    url = cluster.simulator(datasets_dir, latency_ms=100)
    cluster.start_worker()
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "cot", "--chunk-size", "3")
    cluster.wait_for_rationales(3)
    cluster.redis.restart()  # same port, nothing kept: the queued chunks are gone
    time.sleep(3)
    pending = cluster.job_counts(job).get("pending", 0)
    assert pending > 0
    code, out = cluster.kpdd("resume", str(job), "--json")
    assert code == 0 and orjson.loads(out)["requeued_chunks"]
    assert cluster.wait(job, timeout=150) == "completed"
    assert_exact(cluster, job, problems=30, per_problem=1)


def test_postgres_restarted_mid_job_tasks_retry_and_complete(
    cluster: Cluster, datasets_dir: Path, postgres_server: PostgresServer
) -> None:
    ingest(cluster, datasets_dir, 30)
    url = cluster.simulator(datasets_dir, latency_ms=100)
    cluster.start_worker()
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "pot", "--chunk-size", "3")
    cluster.wait_for_rationales(3)
    postgres_server.stop("immediate")
    time.sleep(2)
    postgres_server.start()
    assert cluster.wait(job, timeout=180) == "completed"
    assert_exact(cluster, job, problems=30, per_problem=1)


def test_teacher_faults_end_in_terminal_states_with_each_call_recorded_once(
    cluster: Cluster, datasets_dir: Path
) -> None:
    ingest(cluster, datasets_dir, 40)
    faults = FaultRates(rate_limit=0.1, server_error=0.1, hang=0.03, malformed=0.05, wrong=0.05)
    url = cluster.simulator(datasets_dir, seed=11, faults=faults, fault_retry_after_s=0.2, hang_max_s=30)
    cluster.env["KPDD_TEACHER_TIMEOUT_S"] = "1.5"
    cluster.start_worker()
    cluster.start_worker()
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "both", "--chunk-size", "5")
    assert cluster.wait(job, timeout=180) == "completed"
    assert_exact(cluster, job, problems=40, per_problem=2)
    stats = cluster.sims[0].stats  # type: ignore[attr-defined]
    assert stats["fault_429"] > 0 and stats["fault_500"] > 0 and stats["fault_hang"] > 0
    assert stats["requests"] > 80  # retries happened...
    engine = create_engine(cluster.db_url)
    with Session(engine) as session:
        verdicts = dict(
            session.execute(select(Rationale.verdict, func.count()).group_by(Rationale.verdict)).all()
        )
        attempts = session.scalar(select(func.sum(TeacherCall.attempts)))
    engine.dispose()
    assert verdicts.get("invalid", 0) > 0 and verdicts.get("unparsed", 0) > 0
    assert int(attempts or 0) > 80  # ...and were counted on the one row of each call


def test_shared_rate_limit_keeps_the_provider_from_refusing(cluster: Cluster, datasets_dir: Path) -> None:
    ingest(cluster, datasets_dir, 30)
    url = cluster.simulator(datasets_dir, rpm=600)
    cluster.start_worker()
    cluster.start_worker()
    job = generate(cluster, "--teacher", f"sim:gold@{url},rpm=600", "--mode", "both", "--chunk-size", "3")
    assert cluster.wait(job, timeout=120) == "completed"
    assert_exact(cluster, job, problems=30, per_problem=2)
    assert cluster.sims[0].stats["rate_limited"] == 0  # type: ignore[attr-defined]


def test_worker_refuses_to_start_without_a_broker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in [k for k in os.environ if k.startswith("KPDD_")]:
        monkeypatch.delenv(key)
    get_settings.cache_clear()
    assert main(["worker"]) == 2
    assert "KPDD_BROKER_URL" in capsys.readouterr().err
    get_settings.cache_clear()
