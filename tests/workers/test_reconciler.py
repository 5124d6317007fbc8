"""The reconciler against real components (the suite's Postgres and Redis, `kpdd worker`
processes, the simulator over HTTP): a job survives a Redis wipe and a failed send with nobody
running `kpdd resume`, and a backlog waiting in the queue is not queued twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from db.engine import get_engine
from db.models import JobChunk
from services.generation.dispatch import CeleryDispatcher, EnqueueFailed
from services.generation.jobs import create_job
from services.generation.params import GenerateParams
from tests.servers import free_port
from tests.workers.cluster import Cluster, assert_exact, generate, ingest


def chunk_rows(cluster: Cluster, job_id: int) -> list[JobChunk]:
    engine = create_engine(cluster.db_url)
    with Session(engine) as session:
        rows = list(
            session.scalars(select(JobChunk).where(JobChunk.job_id == job_id).order_by(JobChunk.chunk))
        )
    engine.dispose()
    return rows


def worker_logs(cluster: Cluster) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(cluster.tmp.glob("worker-*.log")))


@pytest.fixture
def quick_reconciler(cluster: Cluster) -> Cluster:
    cluster.env["KPDD_RECONCILE_INTERVAL_S"] = "1"
    return cluster


def test_redis_wiped_mid_job_the_reconciler_finishes_it_without_resume(
    quick_reconciler: Cluster, datasets_dir: Path
) -> None:
    cluster = quick_reconciler
    ingest(cluster, datasets_dir, 30)
    url = cluster.simulator(datasets_dir, latency_ms=100)
    cluster.start_worker()
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "cot", "--chunk-size", "3")
    cluster.wait_for_rationales(3)
    cluster.redis.restart()  # same port, nothing kept: the queued chunks are gone
    assert cluster.job_counts(job).get("pending", 0) > 0
    assert cluster.wait(job, timeout=120) == "completed"  # nobody ran `kpdd resume`
    assert_exact(cluster, job, problems=30, per_problem=1)
    assert f"reconciler: job {job}:" in worker_logs(cluster)
    assert all(row.lease_until is None and row.enqueue_error is None for row in chunk_rows(cluster, job))


def test_a_backlog_waiting_in_the_queue_is_not_queued_again(
    quick_reconciler: Cluster, datasets_dir: Path
) -> None:
    cluster = quick_reconciler
    ingest(cluster, datasets_dir, 24)
    # One process, 6 chunks of 2 s each: most chunks wait in Redis longer than the visibility
    # timeout (6 s), which alone would make them look lost.
    url = cluster.simulator(datasets_dir, latency_ms=2000)
    cluster.start_worker()
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "cot", "--chunk-size", "4")
    assert cluster.wait(job, timeout=120) == "completed"
    assert_exact(cluster, job, problems=24, per_problem=1)
    assert [row.deliveries for row in chunk_rows(cluster, job)] == [1] * 6
    assert "reconciler: job" not in worker_logs(cluster)


def test_a_job_whose_chunks_could_not_be_sent_is_queued_by_the_reconciler(
    quick_reconciler: Cluster, datasets_dir: Path
) -> None:
    cluster = quick_reconciler
    ingest(cluster, datasets_dir, 8)
    url = cluster.simulator(datasets_dir)
    engine = get_engine(cluster.db_url)
    params = GenerateParams(corpus="g", teachers=[f"sim:gold@{url}"], modes=["cot"], chunk_size=4)
    created = create_job(engine, params, queued=True)
    dispatcher = CeleryDispatcher(f"redis://127.0.0.1:{free_port()}/0", engine=engine)  # nothing there
    with pytest.raises(EnqueueFailed):
        dispatcher.enqueue(created.job_id, created.chunks)
    dispatcher.close()
    assert all(row.enqueue_error for row in chunk_rows(cluster, created.job_id))
    started = time.monotonic()
    cluster.start_worker()
    assert cluster.wait(created.job_id, timeout=90) == "completed"
    assert time.monotonic() - started < 60
    assert_exact(cluster, created.job_id, problems=8, per_problem=1)
    assert all(
        row.enqueue_error is None and row.deliveries == 1 for row in chunk_rows(cluster, created.job_id)
    )
