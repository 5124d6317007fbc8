"""Budgets: holds with leases, items that wait for room instead of stopping the job, a job that
uses most of its budget and never more, and the spend of workers that died (outcomes unknown).
On SQLite and Postgres, against the simulator over HTTP with a price."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.engine import get_engine
from db.models import BudgetHold, GenerationJob, Problem
from db.queries.budget import job_spend, settle_hold, take_hold
from db.queries.generation import pending_chunks
from services.generation.budget import BudgetPolicy, ask_within_budget, estimate_cost
from services.generation.execute import Generator
from services.generation.jobs import create_job
from services.generation.params import GenerateParams
from services.teachers.rationale import CALL_GUARD, STOPPED, CallFailure, RationaleWork
from services.teachers.registry import build_client
from tests.conftest import CliResult

PRICE = {"input": 2.5, "output": 10.0}  # dollars per million tokens: a rationale costs ~$0.004


@pytest.fixture
def priced(kpdd: Callable[..., CliResult], kpdd_env: Callable[..., None], db_url: str, tmp_path: Path) -> str:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"sim:gold": PRICE}}))
    kpdd_env(database_url=db_url, prices_file=str(prices))
    return db_url


def _job(db_url: str, sim_url: str, budget: str, chunk_size: int = 16) -> int:
    params = GenerateParams(
        corpus="g",
        teachers=[f"sim:gold@{sim_url}"],
        modes=["cot"],
        budget_usd=Decimal(budget),
        chunk_size=chunk_size,
    )
    return create_job(get_engine(db_url), params, queued=False).job_id


def test_holds_never_overcommit_and_a_dead_workers_hold_counts_as_unknown_spend(
    priced: str, small_corpus: Callable[..., str], simulator: Callable[..., str]
) -> None:
    small_corpus(2)
    job_id = _job(priced, simulator(), "1.00")
    engine = get_engine(priced)
    with Session(engine) as session, session.begin():
        a = take_hold(session, job_id, Decimal("0.6"), "host:1:1", 60)
        b = take_hold(session, job_id, Decimal("0.5"), "host:1:2", 60)
    assert a.hold_id is not None and b.hold_id is None and b.live_holds == 1  # B waits for A
    with Session(engine) as session, session.begin():
        settle_hold(session, job_id, a.hold_id, Decimal("0.3"))
        b = take_hold(session, job_id, Decimal("0.5"), "host:1:2", 60)
        dead = take_hold(session, job_id, Decimal("0.15"), "gone:2:1", -1)  # its lease has passed
    assert b.hold_id is not None and dead.hold_id is not None
    with Session(engine) as session, session.begin():
        spend = job_spend(session, job_id)
        c = take_hold(session, job_id, Decimal("0.1"), "host:1:3", 60)
    assert spend is not None
    assert (spend.spent_usd, spend.held_usd, spend.unknown_usd) == (
        Decimal("0.3"),
        Decimal("0.5"),
        Decimal("0.15"),
    )
    assert spend.spent_incl_unknown_usd == Decimal("0.45") and spend.unknown_holds == 1
    # 0.3 spent + 0.5 held + 0.15 unknown + 0.1 > 1: C waits, for B only (the dead hold is not live).
    assert c.hold_id is None and c.live_holds == 1
    with Session(engine) as session, session.begin():
        settle_hold(session, job_id, b.hold_id, Decimal("0.4"))
        c = take_hold(session, job_id, Decimal("0.2"), "host:1:3", 60)
    assert c.hold_id is None and c.live_holds == 0  # nothing left to settle: the budget is spent
    with Session(engine) as session:
        job = session.get(GenerationJob, job_id)
        assert job is not None and job.spent_usd == Decimal("0.7") and job.reserved_usd == Decimal("0.15")


def test_an_item_that_does_not_fit_waits_for_live_holds_then_is_asked(
    priced: str, small_corpus: Callable[..., str], simulator: Callable[..., str]
) -> None:
    small_corpus(1)
    url = simulator()
    job_id = _job(priced, url, "0.02")
    engine = get_engine(priced)
    with Session(engine) as session:
        question = session.scalars(select(Problem.question)).one()
    work = RationaleWork(question, "cot")
    with build_client(f"sim:gold@{url}", database_url=priced) as client:
        with Session(engine) as session, session.begin():  # another worker holds most of it
            other = take_hold(session, job_id, Decimal("0.015"), "elsewhere:1:1", 60)
        assert other.hold_id is not None and estimate_cost(engine, client, work) > Decimal("0.005")
        got: list[object] = []
        asker = threading.Thread(target=lambda: got.append(ask_within_budget(engine, job_id, client, work)))
        asker.start()
        time.sleep(0.8)
        assert asker.is_alive() and not got  # waiting, the job not stopped
        with Session(engine) as session, session.begin():
            settle_hold(session, job_id, other.hold_id, Decimal("0.001"))
        asker.join(30)
    assert not asker.is_alive()
    outcome = got[0]
    assert outcome is not None and outcome.paid_calls == 1  # type: ignore[attr-defined]
    with Session(engine) as session:
        job = session.get(GenerationJob, job_id)
        assert job is not None and job.reserved_usd == 0
        assert job.spent_usd == Decimal("0.001") + outcome.cost_usd  # type: ignore[attr-defined]
        assert session.scalar(select(func.count()).select_from(BudgetHold)) == 0


def test_a_cancelled_job_ends_the_wait_for_room(
    priced: str, small_corpus: Callable[..., str], simulator: Callable[..., str]
) -> None:
    small_corpus(1)
    url = simulator()
    job_id = _job(priced, url, "0.02")
    engine = get_engine(priced)
    with Session(engine) as session:
        question = session.scalars(select(Problem.question)).one()
    with Session(engine) as session, session.begin():
        take_hold(session, job_id, Decimal("0.019"), "elsewhere:1:1", 60)
    cancelled = threading.Event()
    got: list[object] = []

    def ask() -> None:
        CALL_GUARD.set(lambda: "job is cancelled" if cancelled.is_set() else None)
        with build_client(f"sim:gold@{url}", database_url=priced) as client:
            got.append(ask_within_budget(engine, job_id, client, RationaleWork(question, "cot")))

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(0.5)
    assert asker.is_alive()
    cancelled.set()
    asker.join(30)
    assert not asker.is_alive()
    failure = got[0].result  # type: ignore[attr-defined]
    assert isinstance(failure, CallFailure) and failure.kind == STOPPED


@pytest.mark.parametrize("budget", ["0.10", "0.40"])
def test_a_job_uses_its_budget_up_to_one_estimate_and_never_more(
    priced: str, small_corpus: Callable[..., str], simulator: Callable[..., str], budget: str
) -> None:
    small_corpus(200)
    url = simulator(latency_ms=20)
    job_id = _job(priced, url, budget)
    engine = get_engine(priced)
    generator = Generator(engine, lambda spec: build_client(spec, database_url=priced), threads=8)
    try:
        with Session(engine) as session:
            chunks = pending_chunks(session, job_id)
        for chunk in chunks:
            generator.process_chunk(job_id, chunk)
    finally:
        generator.close()
    with Session(engine) as session:
        job = session.get(GenerationJob, job_id)
        questions = list(session.scalars(select(Problem.question)))
        assert job is not None
        status, spent, reserved = job.status, job.spent_usd, job.reserved_usd
    # The largest hold any item could take: its prompt and max_tokens out, no history.
    with build_client(f"sim:gold@{url}", database_url=priced) as client:
        bound = max(
            estimate_cost(engine, client, RationaleWork(q, "cot"), BudgetPolicy(history=False))
            for q in questions
        )
    assert status == "budget_exhausted" and reserved == 0
    assert Decimal(budget) - bound <= spent <= Decimal(budget)
    print(f"budget ${budget}: used {spent / Decimal(budget):.1%} (one estimate at most: ${bound})")
