"""Claims on teacher requests: no request is paid twice at the same time, and every call reaches
the ledger, crashes included. On SQLite and Postgres, with the real SDK over HTTP to the
simulator, concurrent callers in threads and in processes.

The simulator's own request counter is the referee: it counts what was sent (and would be paid).
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from db.engine import dispose_engines, get_engine
from db.models import TeacherCall
from db.queries.claims import abandon_claim, claim_call, claim_state, settle_claimed
from db.queries.teachers import ledger_spend, teacher_cost_summaries
from services.config import get_settings
from services.kpdd.prompts import render_prompt
from services.teachers.base import TeacherRequest
from services.teachers.calls import _intent, cached_call, fingerprint_of
from services.teachers.registry import build_client
from services.teachers.simulator import ProblemBank, SimulatorConfig, SimulatorHandle, run_in_thread
from tests.servers import PostgresServer
from tests.services.teachers.clients_support import (
    FAKE_OPENAI_KEY,
    fake_keys,
    gsm8k_items,
    make_client,
    sim_bank,
    spec_for,
    teacher_settings,
)

__all__ = ["fake_keys", "sim_bank"]  # fixtures used here

pytestmark = pytest.mark.usefixtures("fake_keys")

LATENCY_MS = 3000  # longer than the claim's period below: only renewal keeps the claim live
CLAIM_TTL_S = "2"


@pytest.fixture
def short_claims(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KPDD_CLAIM_TTL_S", CLAIM_TTL_S)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def slow_sim(sim_bank: ProblemBank) -> Iterator[SimulatorHandle]:
    with run_in_thread(SimulatorConfig(latency_ms=LATENCY_MS, hang_max_s=10.0), sim_bank) as handle:
        yield handle


@pytest.fixture
def fast_sim(sim_bank: ProblemBank) -> Iterator[SimulatorHandle]:
    with run_in_thread(SimulatorConfig(hang_max_s=10.0), sim_bank) as handle:
        yield handle


def _request(index: int = 0) -> TeacherRequest:
    return TeacherRequest(render_prompt(gsm8k_items(1)[0].question, "cot"), sample_index=index)


def _rows(engine: Engine) -> list[TeacherCall]:
    with Session(engine) as session:
        return list(session.scalars(select(TeacherCall).order_by(TeacherCall.id)))


@pytest.mark.usefixtures("short_claims")
def test_two_threads_asking_the_same_request_pay_once(slow_sim: SimulatorHandle, db_url: str) -> None:
    engine = get_engine(db_url)
    results = []
    with make_client(spec_for("openai", slow_sim)) as client:
        threads = [
            threading.Thread(target=lambda: results.append(cached_call(engine, client, _request())))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
            time.sleep(0.3)  # the second finds the first's claim, not an empty table
        for thread in threads:
            thread.join(30)
    # The call lasted longer than a claim without renewal (3 s > 2 s): the claim was renewed.
    assert slow_sim.stats["requests"] == 1
    assert sorted(r.cached for r in results) == [False, True]
    assert results[0].text == results[1].text and results[0].call_id == results[1].call_id
    (row,) = _rows(engine)
    assert row.status == "ok" and row.claimed_by is None and row.claim_until is None
    assert row.attempts == 1 and row.estimated_cost_usd is not None


def _call_in_process(db_url: str, spec: str, out: mp.Queue) -> None:  # type: ignore[type-arg]
    import os

    os.environ["OPENAI_API_KEY"] = FAKE_OPENAI_KEY
    os.environ["KPDD_CLAIM_TTL_S"] = CLAIM_TTL_S
    engine = get_engine(db_url)
    with build_client(spec, settings=teacher_settings()) as client:
        record = cached_call(engine, client, _request())
    out.put((record.cached, record.call_id))
    dispose_engines()


@pytest.mark.usefixtures("short_claims")
def test_two_processes_asking_the_same_request_pay_once(slow_sim: SimulatorHandle, db_url: str) -> None:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    spec = spec_for("openai", slow_sim)
    procs = [ctx.Process(target=_call_in_process, args=(db_url, spec, queue)) for _ in range(2)]
    for proc in procs:
        proc.start()
    outcomes = [queue.get(timeout=90) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert slow_sim.stats["requests"] == 1
    assert sorted(cached for cached, _ in outcomes) == [False, True]
    assert len({call_id for _, call_id in outcomes}) == 1


def test_a_live_claim_is_waited_for_and_its_outcome_replayed(fast_sim: SimulatorHandle, db_url: str) -> None:
    engine = get_engine(db_url)
    with make_client(spec_for("openai", fast_sim)) as client:
        request = _request()
        fingerprint = fingerprint_of(client, request)
        other = "elsewhere:1:1"
        with engine.begin() as conn:  # another worker claims the request, for long enough
            assert claim_call(conn, _intent(client, request, fingerprint, None), other, 60, Decimal("0.01"))
        got = []
        waiter = threading.Thread(target=lambda: got.append(cached_call(engine, client, request)))
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive() and fast_sim.stats["requests"] == 0  # waiting, not paying
        # The other worker's call answers: its outcome is written over its claim.
        answered = _intent(client, request, fingerprint, None)
        answered.status, answered.response_text, answered.attempts = "ok", "Answer: 42", 1
        answered.tokens_in, answered.tokens_out, answered.cost_usd = 10, 5, Decimal("0.00001")
        with engine.begin() as conn:
            assert settle_claimed(conn, answered, other) is not None
        waiter.join(20)
    assert not waiter.is_alive()
    assert got[0].cached and got[0].text == "Answer: 42" and got[0].cost_usd == 0
    assert fast_sim.stats["requests"] == 0


def test_a_claim_whose_holder_died_counts_as_unknown_spend_then_is_taken_over(
    fast_sim: SimulatorHandle, db_url: str
) -> None:
    engine = get_engine(db_url)
    with make_client(spec_for("openai", fast_sim)) as client:
        request = _request()
        fingerprint = fingerprint_of(client, request)
        with engine.begin() as conn:  # a worker claimed the request, then was killed mid-call
            claim_call(conn, _intent(client, request, fingerprint, None), "dead:1:1", 60, Decimal("0.0042"))
            abandon_claim(conn, fingerprint, "dead:1:1")  # as if its claim ran out
        with Session(engine) as session:
            spend = ledger_spend(session)
            (summary,) = teacher_cost_summaries(session)
        assert (spend.unknown_calls, spend.unknown_usd, spend.paid_usd) == (1, Decimal("0.0042"), 0)
        assert spend.spent_incl_unknown_usd == Decimal("0.0042")
        assert summary.unknown_calls == 1 and summary.spent_incl_unknown_usd == Decimal("0.0042")
        with engine.connect() as conn:
            state = claim_state(conn, fingerprint)
        assert state is not None and state.status == "in_flight" and not state.live

        record = cached_call(engine, client, request)  # the redelivery takes it over
    assert not record.cached and record.status == "ok" and fast_sim.stats["requests"] == 1
    (row,) = _rows(engine)
    assert row.status == "ok" and row.claimed_by is None and row.attempts == 1
    with Session(engine) as session:
        spend = ledger_spend(session)
    assert spend.unknown_calls == 0 and spend.paid_usd == row.cost_usd > 0


def test_a_call_that_raises_leaves_an_outcome_unknown_not_a_silent_gap(
    fast_sim: SimulatorHandle, db_url: str
) -> None:
    engine = get_engine(db_url)

    def broken_limiter(_request: TeacherRequest) -> None:
        raise RuntimeError("a bug between the claim and the answer")

    spec = spec_for("openai", fast_sim)
    client = build_client(spec, settings=teacher_settings(), before_attempt=broken_limiter)
    with client, pytest.raises(RuntimeError, match="a bug"):
        cached_call(engine, client, _request())
    (row,) = _rows(engine)
    assert row.status == "in_flight" and row.estimated_cost_usd is not None
    with Session(engine) as session:
        spend = ledger_spend(session)
    assert spend.unknown_calls == 1 and spend.unknown_usd == row.estimated_cost_usd
    with make_client(spec) as client:  # not waited for: the claim ended when the call raised
        assert cached_call(engine, client, _request()).status == "ok"
    assert fast_sim.stats["requests"] == 1


def test_a_refused_attempt_before_sending_is_recorded_with_its_kind(
    fast_sim: SimulatorHandle, db_url: str
) -> None:
    from services.teachers.errors import TeacherCallError

    engine = get_engine(db_url)

    def no_capacity(_request: TeacherRequest) -> None:
        raise TeacherCallError("rate_limit_wait", "no capacity within 0.1 s")

    with build_client(
        spec_for("openai", fast_sim), settings=teacher_settings(), before_attempt=no_capacity
    ) as c:
        record = cached_call(engine, c, _request())
    assert record.status == "failed" and record.error_kind == "rate_limit_wait" and record.attempts == 0
    (row,) = _rows(engine)
    assert row.status == "failed" and row.error_kind == "rate_limit_wait" and row.claimed_by is None
    assert fast_sim.stats["requests"] == 0


def test_an_orphaned_claim_of_this_process_is_taken_over_at_once(
    fast_sim: SimulatorHandle, db_url: str
) -> None:
    from services.leases import process_prefix

    engine = get_engine(db_url)
    with make_client(spec_for("openai", fast_sim)) as client:
        request = _request()
        fingerprint = fingerprint_of(client, request)
        # A thread of this process claimed the request, was answered, and could not write the
        # outcome (the database went away): its claim is live for a minute, but nobody works it.
        with engine.begin() as conn:
            claim_call(conn, _intent(client, request, fingerprint, None), f"{process_prefix()}1", 60, None)
        got = []
        asker = threading.Thread(target=lambda: got.append(cached_call(engine, client, request)))
        asker.start()
        asker.join(20)  # generous; waiting for the claim to expire would take a minute
    assert not asker.is_alive() and not got[0].cached and got[0].status == "ok"
    assert fast_sim.stats["requests"] == 1


def test_an_outcome_the_database_could_not_take_is_written_when_it_is_back(
    slow_sim: SimulatorHandle, pg_url: str, postgres_server: PostgresServer
) -> None:
    from sqlalchemy.exc import OperationalError

    engine = get_engine(pg_url)
    raised: list[BaseException] = []
    with make_client(spec_for("openai", slow_sim)) as client:

        def ask() -> None:
            try:
                cached_call(engine, client, _request())
            except OperationalError as exc:
                raised.append(exc)

        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(1.0)  # claimed, and waiting for the 3 s answer
        postgres_server.stop("immediate")
        asker.join(30)
        postgres_server.start()
        assert raised, "the outcome was written while the database was down?"
        # The answer was paid; the retried work replays it instead of paying again.
        again = cached_call(engine, client, _request())
    assert again.cached and again.status == "ok"
    assert slow_sim.stats["requests"] == 1
    (row,) = _rows(engine)
    assert row.status == "ok" and row.claimed_by is None
