"""Chunk leases, deployment identity and submitted configuration against real components (the
suite's Postgres and Redis, `kpdd worker` processes, the simulator over HTTP)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.orm import Session

from db.engine import get_engine
from db.models import Deployment, GenerationJob, JobChunk, JobFailure, JobProblem, Rationale
from services.config import get_settings
from services.generation.jobs import create_job
from services.generation.params import GenerateParams
from tests.conftest import create_postgres_database
from tests.servers import PostgresServer
from tests.workers.cluster import Cluster, assert_exact, generate, ingest
from tests.workers.test_reconciler import chunk_rows, worker_logs


def _eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _attempts(db_url: str, job_id: int) -> list[int]:
    engine = create_engine(db_url)
    with Session(engine) as session:
        attempts = list(session.scalars(select(JobProblem.attempts).where(JobProblem.job_id == job_id)))
    engine.dispose()
    return attempts


def test_a_chunk_running_past_the_visibility_timeout_is_not_worked_twice(
    cluster: Cluster, datasets_dir: Path
) -> None:
    ingest(cluster, datasets_dir, 16)
    # One chunk of 16 calls of 2 s on 4 threads: about 8 s, past the 6 s visibility timeout, so
    # Redis hands its message to the second, idle worker while the first still works it.
    url = cluster.simulator(datasets_dir, latency_ms=2000)
    cluster.start_worker()
    cluster.start_worker()
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "cot", "--chunk-size", "16")
    assert cluster.wait(job, timeout=120) == "completed"
    assert_exact(cluster, job, problems=16, per_problem=1)
    assert chunk_rows(cluster, job)[0].deliveries >= 2  # delivered again...
    assert _attempts(cluster.db_url, job) == [1] * 16  # ...and started once
    assert "skipped (chunk 0 is being worked by" in worker_logs(cluster)
    assert cluster.sims[0].stats["requests"] == 16  # type: ignore[attr-defined]


def test_resume_of_a_running_job_leaves_the_chunk_in_progress_alone(
    cluster: Cluster, datasets_dir: Path
) -> None:
    ingest(cluster, datasets_dir, 8)
    url = cluster.simulator(datasets_dir, latency_ms=2500)
    cluster.start_worker()
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "cot", "--chunk-size", "4")
    _eventually(lambda: chunk_rows(cluster, job)[0].worker is not None, 30, "chunk 0 to be taken")
    code, out = cluster.kpdd("resume", str(job), "--json")
    assert code == 0
    assert orjson.loads(out)["requeued_chunks"] == [1]  # chunk 0 is held: not queued again
    assert cluster.wait(job, timeout=90) == "completed"
    assert_exact(cluster, job, problems=8, per_problem=1)
    assert _attempts(cluster.db_url, job) == [1] * 8


@pytest.fixture
def other_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A second database on the suite's server, with a deployment id of its own (a clone of the
    template would share the template's)."""
    url = create_postgres_database(postgres_server)
    engine = create_engine(url)
    with Session(engine) as session, session.begin():
        session.execute(update(Deployment).where(Deployment.id == 1).values(deployment_id=str(uuid.uuid4())))
    engine.dispose()
    yield url
    from db.engine import dispose_engines

    dispose_engines()
    admin = create_engine(postgres_server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)"))
    admin.dispose()


def _deployment(url: str) -> str:
    engine = create_engine(url)
    with Session(engine) as session:
        found = session.scalar(select(Deployment.deployment_id))
    engine.dispose()
    return str(found)


def test_a_worker_of_another_deployment_refuses_the_task_and_leaves_it_for_the_right_one(
    cluster: Cluster, datasets_dir: Path, other_database: str
) -> None:
    ingest(cluster, datasets_dir, 8)
    url = cluster.simulator(datasets_dir)
    # The other deployment has a job with the same id, never queued: a worker of that
    # deployment must not touch it when it meets this deployment's task for "job 1".
    cluster.monkeypatch.setenv("KPDD_DATABASE_URL", other_database)
    get_settings.cache_clear()
    ingest(cluster, datasets_dir, 8)
    params = GenerateParams(corpus="g", teachers=[f"sim:gold@{url}"], modes=["cot"], chunk_size=4)
    theirs = create_job(get_engine(other_database), params, queued=False).job_id
    cluster.monkeypatch.setenv("KPDD_DATABASE_URL", cluster.db_url)
    get_settings.cache_clear()
    assert _deployment(other_database) != _deployment(cluster.db_url)

    cluster.env["KPDD_DATABASE_URL"] = other_database
    cluster.start_worker()  # pointed at the other database, consuming this deployment's broker
    cluster.env["KPDD_DATABASE_URL"] = cluster.db_url
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "cot", "--chunk-size", "4")
    assert job == theirs == 1
    _eventually(lambda: f"refused job {job} chunk" in worker_logs(cluster), 30, "the refusal")
    time.sleep(5)  # a few more deliveries meet the wrong worker
    logs = worker_logs(cluster)
    refusals = [line for line in logs.splitlines() if "refused job" in line]
    assert len(refusals) == 1, refusals  # one line, not one per delivery
    assert _deployment(cluster.db_url) in refusals[0] and "KPDD_DATABASE_URL" in refusals[0]
    assert cluster.job_counts(job) == {"pending": 8}  # nobody worked it here...
    engine = create_engine(other_database)
    with Session(engine) as session:  # ...and nothing of the other deployment's job 1 moved
        other = session.get(GenerationJob, theirs)
        assert other is not None and other.status == "queued" and other.started_at is None
        assert set(session.scalars(select(JobProblem.attempts).where(JobProblem.job_id == theirs))) == {0}
        assert set(session.scalars(select(JobChunk.deliveries).where(JobChunk.job_id == theirs))) == {0}
        assert session.scalar(select(func.count()).select_from(Rationale)) == 0
    engine.dispose()

    cluster.start_worker()  # a worker of this deployment: the messages were not lost
    assert cluster.wait(job, timeout=90) == "completed"
    assert_exact(cluster, job, problems=8, per_problem=1)


def test_a_worker_configured_with_another_simulator_refuses_the_job_and_says_so_on_it(
    cluster: Cluster, datasets_dir: Path
) -> None:
    ingest(cluster, datasets_dir, 8)
    submitted_sim = cluster.simulator(datasets_dir)
    other_sim = cluster.simulator(datasets_dir)
    cluster.monkeypatch.setenv("KPDD_SIM_URL", submitted_sim)  # the submitter's
    get_settings.cache_clear()
    cluster.env["KPDD_SIM_URL"] = other_sim
    cluster.start_worker()
    job = generate(cluster, "--teacher", "sim:gold", "--mode", "cot", "--chunk-size", "4")

    def mismatches() -> list[JobFailure]:
        engine = create_engine(cluster.db_url)
        with Session(engine) as session:
            rows = list(session.scalars(select(JobFailure).where(JobFailure.job_id == job)))
        engine.dispose()
        return rows

    _eventually(lambda: bool(mismatches()), 30, "the mismatch to be recorded")
    time.sleep(3)
    rows = mismatches()
    assert len(rows) == 1 and rows[0].kind == "config_mismatch", [r.message for r in rows]
    assert "KPDD_SIM_URL" in rows[0].message and other_sim in rows[0].message
    assert cluster.sims[1].stats["requests"] == 0  # type: ignore[attr-defined]
    assert cluster.job_counts(job) == {"pending": 8}

    cluster.env["KPDD_SIM_URL"] = submitted_sim
    cluster.start_worker()
    assert cluster.wait(job, timeout=90) == "completed"
    assert_exact(cluster, job, problems=8, per_problem=1)
    assert cluster.sims[1].stats["requests"] == 0  # type: ignore[attr-defined]
    assert cluster.sims[0].stats["requests"] == 8  # type: ignore[attr-defined]
