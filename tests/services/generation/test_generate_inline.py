"""Generation jobs run in-process (the embedded default), on SQLite and Postgres, against the
teacher simulator over real HTTP, with exact counts."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.engine import get_engine
from db.models import GenerationJob, JobProblem, Rationale, TeacherCall
from services.generation.execute import Generator
from services.generation.jobs import create_job
from services.generation.params import GenerateParams
from services.teachers.registry import build_client
from services.teachers.simulator.faults import FaultRates
from tests.conftest import CliResult


def _count(db_url: str, model: type, *where: object) -> int:
    engine = create_engine(db_url)
    with Session(engine) as session:
        value = session.scalar(select(func.count()).select_from(model).where(*where))  # type: ignore[arg-type]
    engine.dispose()
    return int(value or 0)


def test_generate_both_modes_with_samples_then_rerun_pays_nothing(
    kpdd: Callable[..., CliResult], db_url: str, small_corpus: Callable[..., str]
) -> None:
    small_corpus(12)
    result = kpdd(
        "generate", "--corpus", "g", "--teacher", "sim:gold", "--mode", "both", "--samples", "2", "--json"
    )
    assert result.code == 0, result.err
    status = orjson.loads(result.out)
    assert status["status"] == "completed"
    assert status["problems"] == {"total": 12, "done": 12, "by_state": {"done": 12}}
    by_mode = {r["mode"]: r for r in status["rationales"]}
    assert by_mode["cot"]["by_verdict"] == {"valid": 24}
    assert by_mode["pot"]["by_verdict"] == {"valid": 24}
    assert _count(db_url, Rationale) == 48
    assert _count(db_url, TeacherCall) == 48  # single mode: one paid call per rationale
    engine = create_engine(db_url)
    with Session(engine) as session:
        pot = session.scalars(select(Rationale).where(Rationale.mode == "pot").limit(1)).one()
        assert pot.program and "ans" in pot.program and pot.verdict_kind == "match"
        assert pot.judged_by == "gold" and pot.core_question and pot.solving_info
        cot = session.scalars(select(Rationale).where(Rationale.mode == "cot").limit(1)).one()
        assert cot.final_answer_text and cot.answer == cot.final_answer_text
    engine.dispose()

    listing = kpdd("status")  # the human list of jobs: spend as plain dollars
    assert listing.code == 0 and "completed" in listing.out
    assert "0.000000" in listing.out and "E-" not in listing.out

    again = kpdd(
        "generate", "--corpus", "g", "--teacher", "sim:gold", "--mode", "both", "--samples", "2", "--json"
    )
    assert again.code == 0
    rerun = orjson.loads(again.out)
    assert rerun["status"] == "completed"
    # The re-run asked nothing, yet its status shows the rationales in its scope.
    assert {r["mode"]: r["by_verdict"] for r in rerun["rationales"]} == {
        "cot": {"valid": 24},
        "pot": {"valid": 24},
    }
    assert _count(db_url, Rationale) == 48
    assert _count(db_url, TeacherCall) == 48  # nothing asked again


def test_staged_mode_makes_three_calls_per_rationale(
    kpdd: Callable[..., CliResult], db_url: str, small_corpus: Callable[..., str]
) -> None:
    small_corpus(4)
    result = kpdd(
        "generate",
        "--corpus",
        "g",
        "--teacher",
        "sim:gold",
        "--mode",
        "cot",
        "--stage-mode",
        "staged",
        "--json",
    )
    status = orjson.loads(result.out)
    assert status["rationales"][0]["by_verdict"] == {"valid": 4}
    assert _count(db_url, TeacherCall) == 12
    assert _count(db_url, Rationale, Rationale.stage_mode == "staged") == 4


def test_redelivered_chunk_running_twice_at_once_duplicates_nothing(
    kpdd: Callable[..., CliResult], db_url: str, small_corpus: Callable[..., str]
) -> None:
    small_corpus(16)
    engine = get_engine(db_url)
    created = create_job(
        engine,
        GenerateParams(corpus="g", teachers=["sim:gold"], modes=["cot", "pot"], samples=2, chunk_size=16),
    )
    assert created.chunks == [0]
    with build_client("sim:gold", database_url=db_url) as client:
        generators = [Generator(engine, lambda _spec: client, threads=4) for _ in range(2)]
        threads = [threading.Thread(target=g.process_chunk, args=(created.job_id, 0)) for g in generators]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for g in generators:
            g._clients.clear()  # the shared client is closed by the `with`
            g.close()
    assert _count(db_url, Rationale) == 16 * 2 * 2
    assert _count(db_url, TeacherCall) == 16 * 2 * 2
    assert _count(db_url, JobProblem, JobProblem.state == "done") == 16
    with Session(engine) as session:
        assert session.get(GenerationJob, created.job_id).status == "completed"  # type: ignore[union-attr]


def test_until_valid_keeps_sampling_until_enough_or_the_cap(
    kpdd: Callable[..., CliResult],
    db_url: str,
    small_corpus: Callable[..., str],
    simulator: Callable[..., str],
) -> None:
    small_corpus(10)
    url = simulator(seed=7, faults=FaultRates(wrong=0.5))
    result = kpdd(
        "generate",
        "--corpus",
        "g",
        "--teacher",
        f"sim:gold@{url}",
        "--mode",
        "cot",
        "--until-valid",
        "2",
        "--max-attempts",
        "6",
        "--json",
    )
    assert result.code == 0, result.err
    engine = create_engine(db_url)
    with Session(engine) as session:
        rows = session.execute(select(Rationale.problem_id, Rationale.sample_index, Rationale.verdict)).all()
    engine.dispose()
    per_problem: dict[int, dict[int, str]] = {}
    for problem_id, index, verdict in rows:
        per_problem.setdefault(problem_id, {})[index] = verdict
    assert len(per_problem) == 10
    kinds = {v for d in per_problem.values() for v in d.values()}
    assert kinds == {"valid", "invalid"}  # the simulator's wrong answers were caught
    for samples in per_problem.values():
        valid = sum(v == "valid" for v in samples.values())
        assert set(samples) == set(range(len(samples)))  # contiguous sample indices
        assert (valid == 2 and len(samples) <= 6) or (valid < 2 and len(samples) == 6), samples
    assert any(len(s) > 2 for s in per_problem.values())  # some needed more than two samples


def test_budget_stops_the_job_and_is_never_exceeded(
    kpdd: Callable[..., CliResult],
    kpdd_env: Callable[..., None],
    db_url: str,
    small_corpus: Callable[..., str],
    tmp_path: Path,
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"sim:gold": {"input": 100.0, "output": 400.0}}}))
    kpdd_env(database_url=db_url, prices_file=str(prices), worker_threads="4")
    small_corpus(30)
    result = kpdd(
        "generate",
        "--corpus",
        "g",
        "--teacher",
        "sim:gold",
        "--mode",
        "cot",
        "--budget-usd",
        "2.5",
        "--chunk-size",
        "5",
        "--json",
    )
    assert result.code == 0, result.err
    status = orjson.loads(result.out)
    assert status["status"] == "budget_exhausted"
    assert "budget of $2.5" in status["stop_reason"]
    spent = float(status["spent_usd"])
    assert 0 < spent <= 2.5
    states = status["problems"]["by_state"]
    assert states.get("budget", 0) > 0 and states.get("pending", 0) == 0
    assert sum(states.values()) == 30
    engine = create_engine(db_url)
    with Session(engine) as session:
        paid = session.scalar(select(func.sum(TeacherCall.cost_usd)))
        job = session.scalars(select(GenerationJob)).one()
        assert float(paid) == pytest.approx(spent)
        assert job.reserved_usd == 0
    engine.dispose()


def test_budget_needs_a_priced_teacher(
    kpdd: Callable[..., CliResult], small_corpus: Callable[..., str]
) -> None:
    small_corpus(2)
    result = kpdd(
        "generate",
        "--corpus",
        "g",
        "--teacher",
        "openai-compatible:m@http://127.0.0.1:9/v1",
        "--budget-usd",
        "1",
    )
    assert result.code == 2
    assert "has no price" in result.err and "KPDD_PRICES_FILE" in result.err


def test_bad_parameters_fail_before_anything_is_written(
    kpdd: Callable[..., CliResult],
    db_url: str,
    small_corpus: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small_corpus(2)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cases = [
        (["--corpus", "nope", "--teacher", "sim:gold"], "no corpus named 'nope'"),
        (["--corpus", "g", "--split", "dev", "--teacher", "sim:gold"], "has no split 'dev'"),
        (["--corpus", "g", "--teacher", "sim:gold,temprature=1"], "'temprature' is not supported"),
        (["--corpus", "g", "--teacher", "openai:gpt-4o-mini"], "OPENAI_API_KEY"),
        (["--corpus", "g", "--teacher", "sim:gold", "--until-valid", "2"], "needs --max-attempts"),
        (["--corpus", "g", "--teacher", "sim:gold", "--samples", "0"], "--samples"),
        (["--corpus", "g", "--teacher", "sim:gold", "--budget-usd", "ten"], "not a number of dollars"),
    ]
    for args, message in cases:
        result = kpdd("generate", *args)
        assert result.code == 2, (args, result.err)
        assert message in result.err, (args, result.err)
        assert len(result.err.strip().splitlines()) == 1
    assert _count(db_url, GenerationJob) == 0


def test_cancelled_job_starts_nothing_more(
    kpdd: Callable[..., CliResult], db_url: str, small_corpus: Callable[..., str]
) -> None:
    small_corpus(8)
    engine = get_engine(db_url)
    created = create_job(
        engine, GenerateParams(corpus="g", teachers=["sim:gold"], modes=["cot"], chunk_size=4)
    )
    result = kpdd("cancel", str(created.job_id), "--json")
    assert orjson.loads(result.out)["problems_cancelled"] == 8
    with build_client("sim:gold", database_url=db_url) as client:
        generator = Generator(engine, lambda _spec: client, threads=2)
        report = generator.process_chunk(created.job_id, 0)
        generator._clients.clear()
        generator.close()
    assert report.skipped
    assert _count(db_url, Rationale) == 0
    assert kpdd("cancel", str(created.job_id)).code == 2  # already cancelled
    status = orjson.loads(kpdd("status", str(created.job_id), "--json").out)
    assert status["status"] == "cancelled" and status["problems"]["by_state"] == {"cancelled": 8}


def test_unlabelled_problems_are_judged_by_consensus(
    kpdd: Callable[..., CliResult],
    db_url: str,
    datasets_dir: Path,
    tmp_path: Path,
    simulator: Callable[..., str],
) -> None:
    lines = (datasets_dir / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    path = tmp_path / "unlabelled.jsonl"
    path.write_text("".join(json.dumps({"question": json.loads(x)["question"]}) + "\n" for x in lines))
    assert kpdd("ingest", "jsonl", path, "--corpus", "u", "--no-answer").code == 0
    url = simulator(seed=3)
    result = kpdd(
        "generate",
        "--corpus",
        "u",
        "--teacher",
        f"sim:gold@{url}",
        "--mode",
        "both",
        "--samples",
        "2",
        "--json",
    )
    assert result.code == 0, result.err
    engine = create_engine(db_url)
    with Session(engine) as session:
        rows = session.scalars(select(Rationale)).all()
    engine.dispose()
    assert len(rows) == 5 * 2 * 2
    assert {r.judged_by for r in rows} == {"consensus"}
    assert {r.verdict for r in rows} == {"valid"}
    details = rows[0].verdict_details or {}
    assert details["method"] == "consensus" and details["details"]["agreement"] == 1.0


def test_a_teacher_that_keeps_failing_fails_its_problems_and_the_job_ends(
    kpdd: Callable[..., CliResult],
    kpdd_env: Callable[..., None],
    db_url: str,
    small_corpus: Callable[..., str],
) -> None:
    kpdd_env(
        database_url=db_url, teacher_max_attempts="2", teacher_backoff_s="0.01", teacher_backoff_max_s="0.02"
    )
    small_corpus(3)
    result = kpdd(
        "generate",
        "--corpus",
        "g",
        "--teacher",
        "sim:gold+fault=500",
        "--mode",
        "cot",
        "--until-valid",
        "1",
        "--max-attempts",
        "3",
        "--json",
    )
    assert result.code == 0, result.err  # the job ran to its end; per-problem failures are data
    status = orjson.loads(result.out)
    assert status["status"] == "completed"
    assert status["problems"]["by_state"] == {"failed": 3}
    assert status["failures"]["problems"] == {"server": 3}
    # Each problem tried its three allowed indices once each (every call with its 2 HTTP
    # attempts), then stopped: no index is asked again within the run.
    assert _count(db_url, Rationale, Rationale.verdict == "failed") == 3 * 3
    assert _count(db_url, TeacherCall) == 3 * 3
    engine = create_engine(db_url)
    with Session(engine) as session:
        attempts = session.scalars(select(TeacherCall.attempts)).all()
    engine.dispose()
    assert attempts == [2] * 9
