"""How generation jobs end, in-process on SQLite and Postgres against the simulator over HTTP:
the attempt cap, replies holding NUL, what `kpdd status` counts, and the pieces the workers'
error handling is made of (classification, the retry schedule, the stored-text escape).
The distributed side (real workers) is in tests/workers/test_job_failures.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import orjson
import psycopg
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine, func, select, update
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from db.engine import get_engine
from db.models import JobFailure, JobProblem, JobRationale, Rationale, TeacherCall
from db.nul import ESCAPE, escape_nul, escape_nul_json, unescape_nul, unescape_nul_json
from services.errors import BadInputError, ConfigError
from services.generation.budget import BudgetExhausted
from services.generation.execute import Generator
from services.generation.failures import RetrySchedule, classify, run_chunk
from services.generation.jobs import create_job
from services.generation.params import GenerateParams
from services.teachers.rationale import RationaleWork, produce_rationale
from services.teachers.registry import build_client
from services.teachers.simulator import SimulatorConfig, run_in_thread
from services.teachers.simulator.bank import CorpusSource
from services.teachers.spec import parse_spec
from services.validation.sandbox import SandboxError
from tests.conftest import CliResult
from tests.services.generation.conftest import gsm8k_subset


def _session(db_url: str) -> Session:
    return Session(create_engine(db_url))


# --- the attempt cap ------------------------------------------------------------------------


def test_a_problem_started_too_often_fails_with_the_last_failure_of_its_chunk(
    kpdd_env: Callable[..., None],
    db_url: str,
    small_corpus: Callable[..., str],
    simulator: Callable[..., str],
) -> None:
    kpdd_env(database_url=db_url, chunk_max_deliveries="2")
    small_corpus(4)
    url = simulator()
    engine = get_engine(db_url)
    created = create_job(
        engine,
        GenerateParams(
            corpus="g", split=None, teachers=[f"sim:gold@{url}"], modes=["cot"], chunk_size=4, limit=None
        ),
    )
    with Session(engine) as session, session.begin():
        first = session.scalars(
            select(JobProblem.problem_id)
            .where(JobProblem.job_id == created.job_id)
            .order_by(JobProblem.problem_id)
        ).first()
        # Two earlier starts of the first problem, the last ended by a worker error.
        session.execute(
            update(JobProblem)
            .where(JobProblem.job_id == created.job_id, JobProblem.problem_id == first)
            .values(attempts=2)
        )
        session.add(
            JobFailure(
                job_id=created.job_id, chunk=0, kind="unexpected", message="RuntimeError: boom", worker="h:1"
            )
        )
    generator = Generator(engine, lambda spec: build_client(spec, database_url=db_url), threads=2)
    try:
        report = run_chunk(generator, created.job_id, 0)
    finally:
        generator.close()
    assert report.problems == 3  # the capped problem was not worked
    with Session(engine) as session:
        rows = {
            p.problem_id: p
            for p in session.scalars(select(JobProblem).where(JobProblem.job_id == created.job_id))
        }
        capped = rows[first]
        assert (capped.state, capped.error_kind, capped.attempts) == ("failed", "attempt_cap", 3)
        assert "started 3 times without finishing (KPDD_CHUNK_MAX_DELIVERIES=2)" in (
            capped.error_message or ""
        )
        assert "unexpected: RuntimeError: boom" in (capped.error_message or "")
        assert sorted(p.state for p in rows.values()) == ["done", "done", "done", "failed"]
        cap_rows = session.scalars(select(JobFailure).where(JobFailure.kind == "attempt_cap")).all()
        assert [(f.chunk, f.problems) for f in cap_rows] == [(0, 1)]
        assert session.scalar(select(func.count()).select_from(TeacherCall)) == 3
    status = _status(engine, created.job_id)
    # The attempt cap is a failure of the system: the job ends failed, saying why.
    assert status["status"] == "failed"
    assert status["stop_reason"].startswith(
        "1 of 4 problems failed (attempt_cap 1); attempt_cap: started 3 times"
    )
    assert status["problems"]["done"] == 3


def _status(engine: object, job_id: int) -> dict:  # type: ignore[type-arg]
    from services.generation.status import job_status

    return json.loads(json.dumps(job_status(engine, job_id).to_json(), default=str))  # type: ignore[arg-type]


# --- what `kpdd status` counts --------------------------------------------------------------


def test_status_counts_done_problems_only_and_shows_failures_with_their_messages(
    kpdd: Callable[..., CliResult],
    kpdd_env: Callable[..., None],
    db_url: str,
    small_corpus: Callable[..., str],
) -> None:
    kpdd_env(
        database_url=db_url, teacher_max_attempts="1", teacher_backoff_s="0.01", teacher_backoff_max_s="0.02"
    )
    small_corpus(4)
    result = kpdd("generate", "--corpus", "g", "--teacher", "sim:gold+fault=500", "--limit", "2", "--json")
    assert result.code == 0, result.err  # teacher failures are data: the job completed
    job = orjson.loads(result.out)["job_id"]
    ok = kpdd("generate", "--corpus", "g", "--teacher", "sim:gold", "--json")
    assert ok.code == 0, ok.err

    status = orjson.loads(kpdd("status", str(job), "--json").out)
    assert status["status"] == "completed"
    assert status["problems"] == {"total": 2, "done": 0, "by_state": {"failed": 2}}
    (server,) = status["failures"]["by_kind"]
    assert (server["kind"], server["problems"], server["recorded"]) == ("server", 2, 0)
    assert "500" in server["message"] or "server" in server["message"].lower()
    assert status["read_by_fallback"] == 0

    human = kpdd("status", str(job))
    assert "problems done 0/2" in human.out
    assert "failed server: 2 problem(s):" in human.out

    # A verdict read through the low-confidence fallback is counted as `kpdd validate` counts it.
    second = orjson.loads(ok.out)["job_id"]
    with _session(db_url) as session, session.begin():
        rationale = session.scalars(
            select(Rationale)
            .join(JobRationale, JobRationale.rationale_id == Rationale.id)
            .where(JobRationale.job_id == second)
            .limit(1)
        ).one()
        rationale.verdict_details = {**(rationale.verdict_details or {}), "confidence": "low"}
    status = orjson.loads(kpdd("status", str(second), "--json").out)
    assert status["read_by_fallback"] == 1
    assert status["problems"] == {"total": 4, "done": 4, "by_state": {"done": 4}}
    assert (
        "1 verdict(s) read their answer through the low-confidence fallback"
        in kpdd("status", str(second)).out
    )


# --- replies holding NUL --------------------------------------------------------------------


def test_a_reply_holding_nul_is_stored_escaped_and_replayed_exactly(
    kpdd: Callable[..., CliResult], db_url: str, datasets_dir: Path, tmp_path: Path
) -> None:
    path = gsm8k_subset(datasets_dir, tmp_path, 3)
    assert kpdd("ingest", "gsm8k", path, "--corpus", "g").code == 0
    # The simulator answers from a copy of the corpus whose worked solutions carry a NUL.
    poisoned = tmp_path / "nul.jsonl"
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        record["answer"] = record["answer"].replace(" ", " \x00", 1)
        lines.append(json.dumps(record))
    poisoned.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sim = run_in_thread(SimulatorConfig(corpora=[CorpusSource("gsm8k", poisoned)]))
    try:
        result = kpdd("generate", "--corpus", "g", "--teacher", f"sim:gold@{sim.url}", "--json")
        assert result.code == 0, result.err
        assert orjson.loads(result.out)["status"] == "completed"
        with _session(db_url) as session:
            texts = session.scalars(select(TeacherCall.response_text)).all()
            assert len(texts) == 3 and all(
                ESCAPE + "0" in (t or "") and "\x00" not in (t or "") for t in texts
            )
            question = session.scalar(select(JobProblem.problem_id).limit(1))
            assert question is not None
            from db.models import Problem

            problem = session.get(Problem, question)
            assert problem is not None
            stored = session.scalars(select(Rationale).where(Rationale.problem_id == problem.id)).one()
            assert "\x00" not in json.dumps(stored.verdict_details)
        # A replay gives back the reply as the teacher sent it, NUL included, for free.
        client = build_client(parse_spec(f"sim:gold@{sim.url}"), database_url=db_url)
        try:
            outcome = produce_rationale(
                get_engine(db_url), client, RationaleWork(problem.question, "cot", problem_id=problem.id)
            )
        finally:
            client.close()
        (call,) = outcome.calls
        assert call.cached and "\x00" in (call.text or "") and ESCAPE not in (call.text or "")
        assert sim.stats["requests"] == 3  # type: ignore[attr-defined]
        # An export gives the rationales' text back as the teacher wrote it, NUL included.
        out = tmp_path / "snapshot"
        exported = kpdd("export", "--out", out, "--verdict", "all", "--format", "jsonl")
        assert exported.code == 0, exported.err
        data = "".join(p.read_text(encoding="utf-8") for p in sorted(out.rglob("*.jsonl")))
        assert "\\u0000" in data and ESCAPE not in data
    finally:
        sim.close()


# --- the pieces -----------------------------------------------------------------------------


@given(st.text(alphabet=st.sampled_from(["a", "\x00", ESCAPE, "0", "e", "é", " "])))
def test_the_nul_escape_is_reversible_and_leaves_ordinary_text_alone(text: str) -> None:
    stored = escape_nul(text)
    assert stored is not None and "\x00" not in stored
    assert unescape_nul(stored) == text
    if "\x00" not in text and ESCAPE not in text:
        assert stored is text
    document = {"k\x00": [text, {"x": text}], "n": 1}
    assert unescape_nul_json(escape_nul_json(document)) == document


def test_errors_are_classified_before_they_are_retried() -> None:
    connection = psycopg.OperationalError("connection refused")
    cases: list[tuple[BaseException, str, bool]] = [
        (OperationalError("SELECT 1", {}, connection), "database_unavailable", True),
        (connection, "database_unavailable", True),
        (redis.ConnectionError("Connection refused"), "broker_unavailable", True),
        (ConnectionRefusedError(111, "refused"), "database_unavailable", True),
        (
            DataError("INSERT", {}, psycopg.DataError("value too long for type character varying(32)")),
            "bad_value",
            False,
        ),
        (ValueError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), "bad_value", False),
        (IntegrityError("INSERT", {}, psycopg.IntegrityError("duplicate key")), "integrity", False),
        (ProgrammingError("SELECT", {}, psycopg.ProgrammingError("no such column")), "database", False),
        (ConfigError("teacher openai:x needs an API key in OPENAI_API_KEY"), "config", False),
        (BadInputError("teacher spec: bad"), "bad_input", False),
        (BudgetExhausted("no price"), "budget", False),
        (SandboxError("cannot start"), "sandbox", False),
        (KeyError("missing"), "unexpected", False),
        (OperationalError("SELECT", {}, Exception("no such table: jobs")), "database", False),
    ]
    for exc, kind, transient in cases:
        failure = classify(exc)
        assert (failure.kind, failure.transient) == (kind, transient), exc
        assert "\n" not in failure.message
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = connection
    assert classify(wrapped).transient
    assert classify(ConfigError("x")).job_wide and not classify(ValueError("x")).job_wide
    assert "value too long" in classify(cases[4][0]).message


@pytest.mark.parametrize("visibility_timeout_s", [5, 6, 60, 600, 3600])
def test_a_retry_never_waits_as_long_as_the_visibility_timeout(visibility_timeout_s: int) -> None:
    schedule = RetrySchedule(visibility_timeout_s, window_s=900)
    waits = [schedule.countdown(n) for n in range(schedule.max_retries + 5)]
    assert max(waits) <= visibility_timeout_s / 4
    assert max(waits) <= 30
    # The retries cover the window: a long outage is waited out before giving up.
    assert sum(schedule.ceiling(n) for n in range(schedule.max_retries)) >= 900
