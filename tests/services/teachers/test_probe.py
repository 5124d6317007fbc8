"""`kpdd probe`, in-process, on SQLite and Postgres: offline against the embedded simulator, against
a running simulator through KPDD_SIM_URL, and through a provider's SDK with a (fake) key."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.engine import get_engine
from db.models import TeacherCall
from services.config import get_settings
from services.teachers.simulator import SimulatorHandle
from tests.conftest import CliResult
from tests.services.teachers.clients_support import (
    FAKE_OPENAI_KEY,
    GSM8K_TEST,
    EchoServer,
    echo_server,
    sim,
    sim_bank,
    spec_for,
)

__all__ = ["echo_server", "sim", "sim_bank"]  # fixtures used here

Kpdd = Callable[..., CliResult]


@pytest.fixture
def probe_env(kpdd: Kpdd, monkeypatch: pytest.MonkeyPatch) -> Kpdd:
    """`kpdd` with GSM8K test ingested, no API key in the environment, and fast backoff."""
    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("KPDD_TEACHER_BACKOFF_S", "0")
    monkeypatch.setenv("KPDD_TEACHER_MAX_ATTEMPTS", "2")
    get_settings.cache_clear()  # re-read the variables just set (the fixture `kpdd_env` clears it after)
    result = kpdd("ingest", "gsm8k", GSM8K_TEST, "--corpus", "gsm8k", "--split", "test")
    assert result.code == 0, result.err
    return kpdd


def _json(result: CliResult) -> dict[str, Any]:
    assert result.code == 0, result.err
    document: dict[str, Any] = json.loads(result.out)
    return document


def _calls(db_url: str) -> list[TeacherCall]:
    with Session(get_engine(db_url)) as session:
        return list(session.scalars(select(TeacherCall).order_by(TeacherCall.id)))


def test_probe_sim_gold_offline_judges_answers_and_the_rerun_is_free(probe_env: Kpdd, db_url: str) -> None:
    args = ("probe", "--teacher", "sim:gold", "--corpus", "gsm8k", "--limit", "3", "--json")
    first = _json(probe_env(*args))
    assert first["teacher"] == "sim:gold" and first["mode"] == "cot" and first["stage_mode"] == "single"
    assert first["prompt_version"].startswith("kpdd-cot-single-v1+")
    problems = first["problems"]
    assert [p["source_id"] for p in problems] == ["0", "1", "2"]
    for problem in problems:
        assert problem["outcome"]["status"] == "ok"
        assert problem["outcome"]["key_points"]["core_question"]
        assert problem["outcome"]["key_points"]["solving_info"]
        assert problem["verdict"]["checked"] and problem["verdict"]["match"] is True
        assert problem["verdict"]["extracted"] == problem["gold_answer"].rsplit("####", 1)[-1].strip()
        assert problem["outcome"]["latency_ms"] >= 0
    summary = first["summary"]
    assert (summary["problems"], summary["right"], summary["wrong"]) == (3, 3, 0)
    assert (summary["paid_calls"], summary["cached_calls"]) == (3, 0)
    assert summary["cost_usd"] == "0.00000000" and summary["tokens_in"] > 0
    assert len(_calls(db_url)) == 3

    second = _json(probe_env(*args))["summary"]
    assert (second["paid_calls"], second["cached_calls"], second["right"]) == (0, 3, 3)
    assert len(_calls(db_url)) == 3  # nothing new recorded


def test_probe_pot_staged_runs_programs_in_the_sandbox(probe_env: Kpdd, db_url: str) -> None:
    result = probe_env(
        "probe", "--teacher", "sim:gold", "--corpus", "gsm8k", "--split", "test",
        "--limit", "2", "--mode", "pot", "--stage-mode", "staged", "--json",
    )  # fmt: skip
    document = _json(result)
    for problem in document["problems"]:
        assert "ans" in problem["outcome"]["key_points"]["program"]
        assert len(problem["outcome"]["calls"]) == 3
        verdict = problem["verdict"]
        assert verdict["checked"], verdict["reason"]
        assert verdict["match"] is True and verdict["details"]["duration_s"] is not None
    assert {c.stage for c in _calls(db_url)} == {"core_question", "solving_info", "solution"}


def test_probe_prints_key_points_verdicts_and_a_summary(probe_env: Kpdd) -> None:
    result = probe_env("probe", "--teacher", "sim:gold", "--corpus", "gsm8k", "--limit", "2")
    assert result.code == 0, result.err
    assert result.out.count("RIGHT") == 2
    assert "core question: How much in dollars does she make every day" in result.out
    assert "problem-solving information:" in result.out and "final answer: 18" in result.out
    assert "problems 2: right 2, wrong 0" in result.out
    assert "calls: 2 paid, 0 replayed from the cache" in result.out
    assert "cost $0.000000" in result.out and "latency per problem: median" in result.out


def test_probe_reaches_a_running_simulator_through_kpdd_sim_url(
    sim: SimulatorHandle, probe_env: Kpdd, kpdd_env: Callable[..., None], db_url: str
) -> None:
    kpdd_env(database_url=db_url, sim_url=sim.url, teacher_backoff_s="0")
    document = _json(
        probe_env("probe", "--teacher", "sim:gold", "--corpus", "gsm8k", "--limit", "2", "--json")
    )
    assert sim.stats["requests"] == 2  # the calls went to that server
    assert document["summary"]["right"] == 2


def test_probe_through_the_openai_sdk_with_a_key_reports_cost(
    sim: SimulatorHandle, probe_env: Kpdd, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
    spec = spec_for("openai", sim)
    document = _json(
        probe_env(
            "probe", "--teacher", spec, "-O", "temperature=0", "--corpus", "gsm8k", "--limit", "2", "--json"
        )
    )
    summary = document["summary"]
    assert summary["right"] == 2 and summary["paid_calls"] == 2
    assert float(summary["cost_usd"]) > 0 and float(summary["est_cost_per_1000_usd"]) > 0
    assert sim.stats["openai"] == 2
    assert [c.options for c in _calls(db_url)] == [{"max_tokens": 1024, "temperature": 0.0}] * 2


def test_probe_counts_bad_answers_by_kind(sim: SimulatorHandle, probe_env: Kpdd) -> None:
    document = _json(
        probe_env(
            "probe",
            "--teacher",
            spec_for("sim", sim, fault="wrong"),
            "--corpus",
            "gsm8k",
            "--limit",
            "2",
            "--json",
        )
    )
    assert (document["summary"]["right"], document["summary"]["wrong"]) == (0, 2)
    document = _json(
        probe_env(
            "probe",
            "--teacher",
            spec_for("sim", sim, fault="truncate"),
            "--corpus",
            "gsm8k",
            "--limit",
            "2",
            "--json",
        )
    )
    assert document["summary"]["parse_failures_by_kind"] == {"truncated": 2}


def test_an_unknown_option_fails_before_any_call(probe_env: Kpdd, db_url: str) -> None:
    result = probe_env("probe", "--teacher", "sim:gold", "-O", "temperatur=0.2", "--corpus", "gsm8k")
    assert result.code == 2
    assert "'temperatur'" in result.err and "temperature" in result.err
    result = probe_env("probe", "--teacher", "anthropic:claude-3-5-haiku-latest,seed=3", "--corpus", "gsm8k")
    assert result.code == 2 and "'seed' is not supported by anthropic" in result.err
    assert _calls(db_url) == []


def test_a_missing_key_fails_naming_the_variable(probe_env: Kpdd, db_url: str) -> None:
    result = probe_env("probe", "--teacher", "openai:gpt-4o-mini", "--corpus", "gsm8k")
    assert result.code == 2
    assert "OPENAI_API_KEY" in result.err and result.err.count("\n") == 1
    assert _calls(db_url) == []


def test_a_rejected_key_fails_naming_the_variable(
    probe_env: Kpdd, echo_server: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
    result = probe_env("probe", "--teacher", f"openai:gpt-4o-mini@{echo_server.url}/v1", "--corpus", "gsm8k")
    assert result.code == 2
    assert "rejected the key in OPENAI_API_KEY" in result.err
    assert FAKE_OPENAI_KEY not in result.err + result.out
    assert len(echo_server.seen) == 1  # stopped at the first problem: an auth error is not retried


def test_an_unreachable_teacher_exits_1(sim: SimulatorHandle, probe_env: Kpdd, db_url: str) -> None:
    result = probe_env(
        "probe", "--teacher", spec_for("sim", sim, fault="500"), "--corpus", "gsm8k", "--limit", "2"
    )
    assert result.code == 1
    assert "every call to sim:gold+fault=500 failed (server 2)" in result.err
    assert sim.stats["requests"] == 4  # 2 problems x KPDD_TEACHER_MAX_ATTEMPTS=2
    assert [(c.status, c.attempts) for c in _calls(db_url)] == [("failed", 2), ("failed", 2)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--corpus", "nope"), "corpus nope has no problems"),
        (("--corpus", "gsm8k", "--split", "train"), "corpus gsm8k/train has no problems"),
        (("--corpus", "gsm8k", "--limit", "0"), "--limit must be between 1 and"),
        (("--corpus", "gsm8k", "--mode", "tot"), "invalid choice: 'tot'"),
    ],
)
def test_bad_arguments_exit_2(probe_env: Kpdd, args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    result = probe_env("probe", "--teacher", "sim:gold", *args)
    assert result.code == 2
    assert message in result.err
