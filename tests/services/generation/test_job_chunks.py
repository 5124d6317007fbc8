"""Chunk bookkeeping and leases, resume's choice of chunks, a job's stable figures, the checks a
worker makes before running a chunk (deployment, submitted configuration), and `kpdd generate`
with a broker that is down or misconfigured: on SQLite and Postgres, against the simulator over
real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from db.engine import get_engine
from db.models import GenerationJob, JobChunk, JobFailure, JobProblem, JobRationale, Rationale
from db.queries.operations import db_now, release_lease, stale_chunks, take_lease
from services.config import get_settings
from services.generation.chunks import hold_chunk, worker_id
from services.generation.deployment import admit_chunk, own_deployment_id
from services.generation.dispatch import CeleryDispatcher, EnqueueFailed
from services.generation.execute import Generator
from services.generation.jobs import create_job, resumable_chunks
from services.generation.params import GenerateParams
from services.teachers.registry import build_client
from services.teachers.simulator.faults import FaultRates
from tests.conftest import CliResult
from tests.servers import free_port
from tests.services.export.conftest import read_rows


def _chunks(db_url: str, job_id: int) -> dict[int, JobChunk]:
    with Session(get_engine(db_url)) as session:
        return {c.chunk: c for c in session.scalars(select(JobChunk).where(JobChunk.job_id == job_id))}


def _attempts(db_url: str, job_id: int, chunk: int) -> list[int]:
    with Session(get_engine(db_url)) as session:
        return list(
            session.scalars(
                select(JobProblem.attempts).where(JobProblem.job_id == job_id, JobProblem.chunk == chunk)
            )
        )


def _submitted(engine: Engine, job_id: int) -> dict[str, Any]:
    with Session(engine) as session:
        job = session.get(GenerationJob, job_id)
        assert job is not None and job.submitted_config is not None
        return dict(job.submitted_config)


def _generator(db_url: str) -> Generator:
    return Generator(get_engine(db_url), lambda spec: build_client(spec, database_url=db_url), threads=4)


def test_chunks_are_recorded_and_a_held_chunk_is_skipped_until_its_lease_ends(
    kpdd: Callable[..., CliResult],
    db_url: str,
    small_corpus: Callable[..., str],
    simulator: Callable[..., str],
) -> None:
    small_corpus(8)
    url = simulator()
    engine = get_engine(db_url)
    params = GenerateParams(corpus="g", teachers=[f"sim:gold@{url}"], modes=["cot"], chunk_size=4)
    created = create_job(engine, params, queued=True)
    job = created.job_id
    chunks = _chunks(db_url, job)
    assert sorted(chunks) == [0, 1] == created.chunks
    assert all(c.queued_at is not None and c.deliveries == 0 and c.worker is None for c in chunks.values())
    # In-process chunks are never the reconciler's: they are not marked queued.
    inline = create_job(engine, params, queued=False)
    assert all(c.queued_at is None for c in _chunks(db_url, inline.job_id).values())

    # Another worker holds chunk 0: a delivery here skips it, counting the delivery only.
    with Session(engine) as session, session.begin():
        now = db_now(session)
        assert take_lease(session, job, 0, "other-host:1", now, now + timedelta(minutes=5)) is None
    generator = _generator(db_url)
    try:
        report = generator.process_chunk(job, 0)
        assert report.skipped is not None and "other-host:1" in report.skipped
        assert _attempts(db_url, job, 0) == [0, 0, 0, 0]  # not started
        assert _chunks(db_url, job)[0].deliveries == 2
        # `kpdd resume` of the running job leaves the chunk in progress alone.
        assert resumable_chunks(engine, job) == [1]

        with Session(engine) as session, session.begin():
            release_lease(session, job, 0, "other-host:1")
        assert resumable_chunks(engine, job) == [0, 1]
        report = generator.process_chunk(job, 0)
        assert report.skipped is None and report.problems == 4
        assert _attempts(db_url, job, 0) == [1, 1, 1, 1]
        row = _chunks(db_url, job)[0]
        assert row.worker is None and row.lease_until is None and row.deliveries == 3  # released

        # A lease whose holder died (expired) does not stop anyone.
        with Session(engine) as session, session.begin():
            now = db_now(session)
            gone = now - timedelta(seconds=1)
            assert take_lease(session, job, 1, "dead-host:1", gone - timedelta(seconds=5), gone) is None
        assert generator.process_chunk(job, 1).problems == 4
        assert generator.process_chunk(job + 100, 0).skipped == "the job is gone"  # exits quietly
    finally:
        generator.close()
    with Session(engine) as session:
        assert session.get(GenerationJob, job).status == "completed"  # type: ignore[union-attr]
    assert resumable_chunks(engine, inline.job_id) == [0, 1]


def test_the_heartbeat_renews_a_lease_while_the_chunk_runs(
    kpdd: Callable[..., CliResult], db_url: str, small_corpus: Callable[..., str]
) -> None:
    small_corpus(4)
    engine = get_engine(db_url)
    job = create_job(engine, GenerateParams(corpus="g", teachers=["sim:gold"], modes=["cot"])).job_id
    with hold_chunk(engine, job, 0, period_s=0.6) as lease:
        assert lease.taken and lease.worker == worker_id()
        first = _chunks(db_url, job)[0]
        assert first.worker == worker_id() and first.lease_until is not None
        time.sleep(1.2)  # longer than the period: only the heartbeat keeps the lease live
        renewed = _chunks(db_url, job)[0]
        assert renewed.lease_until is not None and renewed.lease_until > first.lease_until
        assert resumable_chunks(engine, job) == []
        # A second delivery meanwhile, as another process would see it:
        with Session(engine) as session, session.begin():
            now = db_now(session)
            holder = take_lease(session, job, 0, "other-host:2", now, now + timedelta(seconds=5))
        assert holder is not None and holder.worker == worker_id()
    released = _chunks(db_url, job)[0]
    assert released.worker is None and released.lease_until is None


def _job_figures(kpdd: Callable[..., CliResult], job: int) -> dict[tuple[str, str], Any]:
    result = kpdd("status", job, "--json")
    assert result.code == 0, result.err
    return {(r["teacher"], r["mode"]): r["by_verdict"] for r in orjson.loads(result.out)["rationales"]}


def _export_ids(kpdd: Callable[..., CliResult], out: Path, *args: object) -> list[int]:
    result = kpdd("export", "--out", out, "--format", "jsonl", *args)
    assert result.code == 0, result.err
    return sorted(int(r["rationale_id"]) for r in read_rows(out, "rationales"))


def test_an_ended_jobs_figures_and_export_do_not_change_when_a_later_job_reuses_its_problems(
    kpdd: Callable[..., CliResult],
    kpdd_env: Callable[..., None],
    db_url: str,
    small_corpus: Callable[..., str],
    simulator: Callable[..., str],
    tmp_path: Path,
) -> None:
    small_corpus(10)
    # Job A: a simulator answering 500 to about half the requests, one attempt per call, so
    # some of A's rationales fail.
    faulty = simulator(faults=FaultRates(server_error=0.5), seed=3)
    clean = simulator()
    kpdd_env(database_url=db_url, teacher_max_attempts="1")
    a = kpdd("generate", "--corpus", "g", "--teacher", f"sim:gold@{faulty}", "--mode", "both", "--json")
    job_a = orjson.loads(a.out)["job_id"]
    figures_a = _job_figures(kpdd, job_a)
    failed_a = sum(v.get("failed", 0) for v in figures_a.values())
    valid_a = sum(v.get("valid", 0) for v in figures_a.values())
    assert failed_a > 0 and valid_a > 0 and failed_a + valid_a == 20
    export_a = _export_ids(kpdd, tmp_path / "a1", "--job", job_a)
    assert len(export_a) == valid_a

    # Job B: same problems and teacher, three samples, a healthy simulator: it reuses A's valid
    # rationales, asks A's failed ones again, and adds two samples each.
    b = kpdd(
        "generate",
        "--corpus",
        "g",
        "--teacher",
        f"sim:gold@{clean}",
        "--mode",
        "both",
        "--samples",
        "3",
        "--json",
    )
    assert b.code == 0, b.err
    job_b = orjson.loads(b.out)["job_id"]
    assert _job_figures(kpdd, job_b) == {
        ("sim:gold", "cot"): {"valid": 30},
        ("sim:gold", "pot"): {"valid": 30},
    }
    engine = get_engine(db_url)
    with Session(engine) as session:
        reused = {
            bool(flag): int(count)
            for flag, count in session.execute(
                select(JobRationale.reused, func.count())
                .where(JobRationale.job_id == job_b)
                .group_by(JobRationale.reused)
            )
        }
        asked_again = session.scalar(
            select(func.count())
            .select_from(JobRationale)
            .join(Rationale, Rationale.id == JobRationale.rationale_id)
            .where(JobRationale.job_id == job_b, JobRationale.reused.is_(False), Rationale.job_id == job_a)
        )
    assert reused == {True: valid_a, False: 60 - valid_a}
    assert asked_again == failed_a  # A's failed rationales, made again by B, count as B's own

    # A's figures and export are what they were when A ended.
    assert _job_figures(kpdd, job_a) == figures_a
    assert _export_ids(kpdd, tmp_path / "a2", "--job", job_a) == export_a
    assert len(_export_ids(kpdd, tmp_path / "b", "--job", job_b)) == 60


def test_generate_with_the_broker_down_or_misconfigured_writes_no_job(
    kpdd: Callable[..., CliResult],
    kpdd_env: Callable[..., None],
    db_url: str,
    small_corpus: Callable[..., str],
) -> None:
    small_corpus(4)
    for broker, code, words in (
        (f"redis://127.0.0.1:{free_port()}/0", 1, "cannot reach the broker"),
        ("http://127.0.0.1:6379/0", 2, "is not a broker URL"),
        ("redis://:s3cret@127.0.0.1:" + str(free_port()) + "/0", 1, "cannot reach the broker"),
    ):
        kpdd_env(database_url=db_url, broker_url=broker)
        started = time.monotonic()
        result = kpdd("generate", "--corpus", "g", "--teacher", "sim:gold")
        assert time.monotonic() - started < 20  # bounded: no endless reconnecting
        assert result.code == code, result.err
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "KPDD_BROKER_URL" in lines[0], lines
        assert "s3cret" not in result.err
        with Session(get_engine(db_url)) as session:
            assert session.scalar(select(func.count()).select_from(GenerationJob)) == 0


def test_a_failed_send_is_recorded_on_the_chunks_for_the_reconciler(
    kpdd: Callable[..., CliResult], db_url: str, small_corpus: Callable[..., str]
) -> None:
    small_corpus(6)
    engine = get_engine(db_url)
    created = create_job(
        engine, GenerateParams(corpus="g", teachers=["sim:gold"], modes=["cot"], chunk_size=2), queued=True
    )
    dispatcher = CeleryDispatcher(f"redis://127.0.0.1:{free_port()}/0", engine=engine)
    with pytest.raises(EnqueueFailed) as failed:
        dispatcher.enqueue(created.job_id, created.chunks)
    dispatcher.close()
    message = str(failed.value)
    assert f"job {created.job_id} is recorded" in message and f"kpdd resume {created.job_id}" in message
    assert "reconciler" in message and "\n" not in message
    chunks = _chunks(db_url, created.job_id)
    assert all(c.enqueue_error and "cannot send to the broker" in c.enqueue_error for c in chunks.values())
    # The reconciler's choice: chunks that failed to send are due at once, not after a grace.
    with Session(engine) as session:
        now = db_now(session)
        due = stale_chunks(session, now, now - timedelta(hours=1), 100)
    assert due == [(created.job_id, chunk, True) for chunk in (0, 1, 2)]


def test_a_worker_refuses_another_deployments_task_and_a_job_it_is_configured_differently_for(
    kpdd: Callable[..., CliResult],
    kpdd_env: Callable[..., None],
    db_url: str,
    small_corpus: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    small_corpus(4)
    engine = get_engine(db_url)
    mine = own_deployment_id(engine)

    def failures(job: int) -> list[JobFailure]:
        with Session(engine) as session:
            return list(
                session.scalars(select(JobFailure).where(JobFailure.job_id == job).order_by(JobFailure.id))
            )

    # KPDD_SIM_URL matters to a `sim:` teacher without @URL: the submitter's is recorded.
    kpdd_env(database_url=db_url, sim_url="http://127.0.0.1:7001")
    sim_job = create_job(engine, GenerateParams(corpus="g", teachers=["sim:gold"], modes=["cot"])).job_id
    submitted = _submitted(engine, sim_job)
    assert submitted["sim_url"] == "http://127.0.0.1:7001" and submitted["prices_digest"].startswith(
        "sha256:"
    )
    assert admit_chunk(engine, sim_job, 0, mine) is None  # configured alike

    # Another deployment's task is refused before anything of the job is read or written.
    refusal = admit_chunk(engine, sim_job, 0, "00000000-0000-0000-0000-000000000000")
    assert refusal is not None and refusal.kind == "deployment" and mine in refusal.message
    assert failures(sim_job) == []

    kpdd_env(database_url=db_url, sim_url="http://127.0.0.1:7002")
    for _ in range(3):  # recorded once, however many deliveries meet it
        refusal = admit_chunk(engine, sim_job, 0, mine)
        assert refusal is not None and refusal.kind == "config_mismatch" and "KPDD_SIM_URL" in refusal.message
    assert [(f.kind, f.worker) for f in failures(sim_job)] == [("config_mismatch", worker_id())]
    assert "KPDD_SIM_URL" in failures(sim_job)[0].message
    assert admit_chunk(engine, sim_job, 0, None) is not None  # an old message: same checks

    # A provider key the teacher needs and the worker lacks: recorded, naming the variable only,
    # and not refused: the chunk runs and fails the job at once with the reason.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-value")
    kpdd_env(database_url=db_url)
    openai_job = create_job(
        engine,
        GenerateParams(corpus="g", teachers=["openai:gpt-4o-mini@http://127.0.0.1:7003/v1"], modes=["cot"]),
    ).job_id
    keys = _submitted(engine, openai_job)["keys"]
    assert keys == {"openai:gpt-4o-mini": {"variable": "OPENAI_API_KEY", "present": True}}
    assert admit_chunk(engine, openai_job, 0, mine) is None
    monkeypatch.delenv("OPENAI_API_KEY")
    assert admit_chunk(engine, openai_job, 0, mine) is None
    stored = json.dumps([f.message for f in failures(openai_job)])
    assert "OPENAI_API_KEY" in stored and "sk-test" not in stored

    # Other prices: a warning for a job without a budget, a refusal for a budgeted one.
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"sim:gold": {"input": 1.0, "output": 2.0}}}))
    kpdd_env(database_url=db_url, prices_file=str(prices))
    free = create_job(
        engine, GenerateParams(corpus="g", teachers=["sim:gold@http://h:1"], modes=["cot"])
    ).job_id
    budgeted = create_job(
        engine,
        GenerateParams(corpus="g", teachers=["sim:gold@http://h:1"], modes=["cot"], budget_usd=Decimal(5)),
    ).job_id
    kpdd_env(database_url=db_url)
    assert admit_chunk(engine, free, 0, mine) is None
    assert [f.kind for f in failures(free)] == ["config_mismatch"] and "warning" in failures(free)[0].message
    refusal = admit_chunk(engine, budgeted, 0, mine)
    assert refusal is not None and "KPDD_PRICES_FILE" in refusal.message
    assert get_settings().prices_file is None
