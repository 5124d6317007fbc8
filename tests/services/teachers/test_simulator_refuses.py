"""The simulator never invents an answer: a problem it does not know (or knows without a gold) is
refused with 422, which the teacher clients classify as permanent (no retry), and the call is
recorded as failed with the simulator's message. Through the real SDKs and the real CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from db.engine import get_engine
from db.models import TeacherCall
from services.kpdd.prompts import render_prompt
from services.teachers.base import TeacherRequest
from services.teachers.calls import cached_call
from services.teachers.errors import RETRYABLE_KINDS
from services.teachers.simulator import ProblemBank, SimulatorConfig, SimulatorHandle, run_in_thread
from services.teachers.simulator.rationale import GoldProblem
from tests.conftest import CliResult
from tests.services.teachers.clients_support import (
    Sleeps,
    fake_keys,
    gsm8k_items,
    make_client,
    sim,
    sim_bank,
    spec_for,
)

__all__ = ["fake_keys", "sim", "sim_bank"]  # fixtures used here

ZORB = "A zorb has 7 blips and gains 3 more. How many blips does the zorb have?"
DUCKS = "A farmer has 3 ducks. How many legs do the ducks have?"


@pytest.mark.usefixtures("fake_keys")
@pytest.mark.parametrize("provider", ["sim", "openai", "anthropic"])
def test_an_unknown_problem_is_a_permanent_failure_recorded_once(
    sim: SimulatorHandle, sqlite_url: str, provider: str
) -> None:
    engine: Engine = get_engine(sqlite_url)
    sleeps = Sleeps()
    before = sim.stats
    with make_client(spec_for(provider, sim), sleeps) as client:
        record = cached_call(engine, client, TeacherRequest(render_prompt(ZORB, "cot"), 0))
        known = cached_call(
            engine, client, TeacherRequest(render_prompt(gsm8k_items(1)[0].question, "cot"), 0)
        )
    assert record.status == "failed" and record.error_kind == "bad_request"
    assert record.error_kind not in RETRYABLE_KINDS and not record.retryable
    assert record.attempts == 1 and sleeps.waits == []  # never retried
    assert "does not know this problem" in (record.error_message or "")
    assert known.status == "ok" and "The answer is:" in (known.text or "")
    after = sim.stats
    assert after["unknown_question"] == before["unknown_question"] + 1
    assert after["answered"] == before["answered"] + 1
    with Session(engine) as session:
        row = session.scalars(select(TeacherCall).where(TeacherCall.id == record.call_id)).one()
    assert row.status == "failed" and row.http_status == 422 and row.response_text is None


def test_a_problem_known_without_a_gold_is_refused_too() -> None:
    import openai

    bank = ProblemBank()
    bank.add(GoldProblem(DUCKS, None))
    with run_in_thread(SimulatorConfig(), bank) as handle:
        client = openai.OpenAI(base_url=handle.openai_base_url, api_key="any", max_retries=0)
        with pytest.raises(openai.UnprocessableEntityError) as exc_info:
            client.chat.completions.create(
                model="gold",
                messages=render_prompt(DUCKS, "pot").openai_messages(),  # type: ignore[arg-type]
            )
        client.close()
        assert handle.stats["unknown_question"] == 1 and handle.stats["answered"] == 0
    error = exc_info.value
    assert error.status_code == 422
    assert "knows this problem but not its answer" in error.message
    assert isinstance(error.body, dict) and error.body.get("code") == "unknown_problem"


def test_probe_of_problems_the_simulator_does_not_know_fails_saying_why(
    sim: SimulatorHandle, kpdd: Callable[..., CliResult], tmp_path: Path
) -> None:
    path = tmp_path / "made-up.jsonl"
    path.write_text(
        "".join(json.dumps({"question": q, "answer": "10"}) + "\n" for q in (ZORB, DUCKS)), encoding="utf-8"
    )
    assert kpdd("ingest", "jsonl", path, "--corpus", "made-up").code == 0
    # `sim` knows GSM8K test only: both problems are refused, nothing is invented.
    result = kpdd("probe", "--teacher", spec_for("sim", sim), "--corpus", "made-up", "--limit", "2")
    assert result.code == 1
    assert "every call to sim:gold failed (bad_request 2)" in result.err
    assert result.out.count("does not know this problem") == 2
    assert "right 0, wrong 0" in result.out
    # The embedded simulator loads the problems of the kpdd database: it knows them.
    embedded = kpdd("probe", "--teacher", "sim:gold", "--corpus", "made-up", "--limit", "2")
    assert embedded.code == 0, embedded.err
    assert "problems 2: right 2, wrong 0" in embedded.out
