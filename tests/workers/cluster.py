"""A test cluster of real components: the suite's private Postgres and Redis, `kpdd worker`
processes (Celery, prefork) and the teacher simulator over HTTP. Use the `cluster` fixture
(tests/workers/conftest.py) and the helpers below; each test module adds its own scenarios."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.engine import dispose_engines
from db.models import GenerationJob, JobProblem, Rationale, TeacherCall
from services.cli.main import main
from services.config import get_settings
from services.teachers.simulator import SimulatorConfig, run_in_thread
from services.teachers.simulator.bank import CorpusSource
from tests.servers import RedisServer
from tests.services.generation.conftest import gsm8k_subset

REPO = Path(__file__).resolve().parents[2]


class Cluster:
    """Postgres database + Redis broker + simulator + worker processes for one test."""

    def __init__(self, db_url: str, redis: RedisServer, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.db_url = db_url
        self.redis = redis
        self.tmp = tmp
        self.monkeypatch = monkeypatch
        self.workers: list[subprocess.Popen[bytes]] = []
        self.sims: list[object] = []
        self.env = {
            "KPDD_DATABASE_URL": db_url,
            "KPDD_BROKER_URL": redis.url(),
            "KPDD_DATA_DIR": str(tmp / "data"),
            "KPDD_WORKER_THREADS": "4",
            "KPDD_SANDBOX_WORKERS": "2",
            "KPDD_VISIBILITY_TIMEOUT_S": "6",
            "KPDD_TEACHER_TIMEOUT_S": "5",
            "KPDD_TEACHER_BACKOFF_S": "0.05",
            "KPDD_TEACHER_BACKOFF_MAX_S": "0.2",
        }
        for key in [k for k in os.environ if k.startswith("KPDD_")]:
            monkeypatch.delenv(key)
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()

    def kpdd(self, *args: str) -> tuple[int, str]:
        """Run the CLI in this process; returns (exit code, stdout)."""
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = int(exc.code or 0)
        return code, out.getvalue()

    def simulator(self, datasets_dir: Path, **config: object) -> str:
        handle = run_in_thread(
            SimulatorConfig(
                corpora=[CorpusSource("gsm8k", datasets_dir / "gsm8k" / "train.jsonl")],
                **config,  # type: ignore[arg-type]
            )
        )
        self.sims.append(handle)
        return str(handle.url)

    def start_worker(self, concurrency: int = 1) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"worker-{len(self.workers)}.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli.main",
                "worker",
                "--concurrency",
                str(concurrency),
                "--loglevel",
                "INFO",
            ],
            cwd=REPO,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and every process of its pool, as a machine crash would."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def job_counts(self, job_id: int) -> dict[str, int]:
        engine = create_engine(self.db_url)
        with Session(engine) as session:
            rows = session.execute(
                select(JobProblem.state, func.count())
                .where(JobProblem.job_id == job_id)
                .group_by(JobProblem.state)
            ).all()
        engine.dispose()
        return {state: count for state, count in rows}

    def rationales(self) -> int:
        engine = create_engine(self.db_url)
        with Session(engine) as session:
            count = session.scalar(select(func.count()).select_from(Rationale))
        engine.dispose()
        return int(count or 0)

    def wait(self, job_id: int, timeout: float = 120) -> str:
        engine = create_engine(self.db_url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                with Session(engine) as session:
                    status = session.scalar(select(GenerationJob.status).where(GenerationJob.id == job_id))
                if status not in ("queued", "running"):
                    return str(status)
                time.sleep(0.3)
        finally:
            engine.dispose()
        logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in self.tmp.glob("worker-*.log"))
        raise AssertionError(f"job {job_id} did not finish in {timeout} s: {self.job_counts(job_id)}\n{logs}")

    def wait_for_rationales(self, at_least: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.rationales() < at_least:
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.1)

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for sim in self.sims:
            sim.close()  # type: ignore[attr-defined]
        dispose_engines()
        get_settings.cache_clear()


def ingest(cluster: Cluster, datasets_dir: Path, count: int) -> None:
    path = gsm8k_subset(datasets_dir, cluster.tmp, count)
    assert cluster.kpdd("ingest", "gsm8k", str(path), "--corpus", "g")[0] == 0


def generate(cluster: Cluster, *args: str) -> int:
    code, out = cluster.kpdd("generate", "--corpus", "g", "--json", *args)
    assert code == 0, out
    return int(orjson.loads(out)["job_id"])


def assert_exact(
    cluster: Cluster, job_id: int, problems: int, per_problem: int, calls_per_rationale: int = 1
) -> None:
    counts = cluster.job_counts(job_id)
    assert counts.get("pending", 0) == 0 and sum(counts.values()) == problems, counts
    engine = create_engine(cluster.db_url)
    with Session(engine) as session:
        # Rationale identities are unique by constraint: the count is exact or something is lost.
        total = session.scalar(select(func.count()).select_from(Rationale))
        per_problem_rows = session.execute(
            select(Rationale.problem_id, func.count()).group_by(Rationale.problem_id)
        ).all()
        calls, distinct_calls = session.execute(
            select(func.count(), func.count(func.distinct(TeacherCall.fingerprint)))
        ).one()
    engine.dispose()
    assert total == problems * per_problem
    assert {count for _, count in per_problem_rows} == {per_problem}
    assert calls == distinct_calls == total * calls_per_rationale
