"""No request is paid twice, and no worker thread is deaf to a cancel, with real components: the
suite's Postgres and Redis, `kpdd worker` processes and the simulator over HTTP, whose request
counter says what was sent (and would have been paid)."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.models import TeacherCall
from services.generation.dispatch import PROCESS_CHUNK_TASK
from tests.workers.cluster import Cluster, assert_exact, generate, ingest


def _calls(cluster: Cluster) -> list[tuple[str, str | None]]:
    engine = create_engine(cluster.db_url)
    with Session(engine) as session:
        rows = session.execute(
            select(TeacherCall.status, TeacherCall.error_kind).order_by(TeacherCall.id)
        ).all()
    engine.dispose()
    return [(str(s), k) for s, k in rows]


def _received(cluster: Cluster) -> int:
    """Deliveries of chunk tasks, as the workers logged them."""
    lines = [
        line
        for path in cluster.tmp.glob("worker-*.log")
        for line in path.read_text(errors="replace").splitlines()
        if f"{PROCESS_CHUNK_TASK}[" in line and line.rstrip().endswith("received")
    ]
    return len(lines)


def test_a_chunk_redelivered_while_its_first_worker_runs_pays_each_request_once(
    cluster: Cluster, datasets_dir: Path
) -> None:
    ingest(cluster, datasets_dir, 12)
    # 12 calls of 2 s on 2 threads: the chunk runs ~12 s, past the 6 s visibility timeout, so
    # Redis hands its message to the second worker while the first is still working it.
    url = cluster.simulator(datasets_dir, latency_ms=2000)
    cluster.env["KPDD_WORKER_THREADS"] = "2"
    cluster.start_worker()
    cluster.start_worker()
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "cot", "--chunk-size", "12")
    assert cluster.wait(job, timeout=150) == "completed"
    assert_exact(cluster, job, problems=12, per_problem=1)
    engine = create_engine(cluster.db_url)
    with Session(engine) as session:
        distinct = session.scalar(select(func.count(func.distinct(TeacherCall.fingerprint))))
    engine.dispose()
    assert cluster.sims[0].stats["requests"] == distinct == 12  # type: ignore[attr-defined]
    assert _received(cluster) >= 2, "the chunk was not delivered a second time: the test proves nothing"


def test_cancel_ends_a_job_stuck_waiting_for_the_rate_limiter(cluster: Cluster, datasets_dir: Path) -> None:
    ingest(cluster, datasets_dir, 3)
    url = cluster.simulator(datasets_dir)
    cluster.start_worker()
    # One request a minute: the first call goes through, the other two wait about 60 s.
    job = generate(cluster, "--teacher", f"sim:gold@{url},rpm=1", "--mode", "cot", "--chunk-size", "3")
    deadline = time.monotonic() + 60
    while sum(status == "in_flight" for status, _ in _calls(cluster)) < 2:
        assert time.monotonic() < deadline, f"no call waits for the limiter: {_calls(cluster)}"
        time.sleep(0.2)
    assert cluster.kpdd("cancel", str(job))[0] == 0
    # Generous: a wait hears the cancel within a slice (1 s); unheard, it would last ~60 s more.
    deadline = time.monotonic() + 30
    while any(status == "in_flight" for status, _ in _calls(cluster)):
        assert time.monotonic() < deadline, f"the waiting calls did not end: {_calls(cluster)}"
        time.sleep(0.2)
    calls = _calls(cluster)
    assert calls.count(("failed", "job_stopped")) == 2 and calls.count(("ok", None)) == 1, calls
    assert cluster.sims[0].stats["requests"] == 1  # type: ignore[attr-defined]
