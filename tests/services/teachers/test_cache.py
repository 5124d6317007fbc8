"""The response cache and the cost ledger, on SQLite and Postgres.

Re-running the same work replays stored responses: the simulator sees no new request and no new
row is paid. Every paid call is one row, with tokens and a cost computed from the price table.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from db.engine import get_engine, session_scope
from db.models import TeacherCall
from db.queries.teachers import NewTeacherCall, count_calls, record_call, teacher_cost_summaries
from services.errors import ConfigError
from services.kpdd.prompts import render_prompt
from services.kpdd.records import KeyPoints
from services.teachers.calls import request_fingerprint
from services.teachers.pricing import ModelPrice, load_prices
from services.teachers.rationale import CallFailure, RationaleWork, produce_rationale
from services.teachers.simulator import SimulatorHandle
from tests.services.teachers.clients_support import (
    fake_keys,
    gsm8k_items,
    make_client,
    sim,
    sim_bank,
    spec_for,
)

__all__ = ["fake_keys", "sim", "sim_bank"]  # fixtures used here

pytestmark = pytest.mark.usefixtures("fake_keys")


@pytest.fixture
def db_engine(db_url: str) -> Engine:
    return get_engine(db_url)


def _rows(engine: Engine) -> list[TeacherCall]:
    with Session(engine) as session:
        return list(session.scalars(select(TeacherCall).order_by(TeacherCall.id)))


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_second_run_replays_every_response_and_pays_nothing(
    sim: SimulatorHandle, db_engine: Engine, provider: str
) -> None:
    items = gsm8k_items(3)
    works = [
        RationaleWork(item.question, mode, stage_mode)
        for item in items
        for mode in ("cot", "pot")
        for stage_mode in ("single", "staged")
    ]
    with make_client(spec_for(provider, sim)) as client:
        first = [produce_rationale(db_engine, client, work) for work in works]
        requests = sim.stats["requests"]
        with Session(db_engine) as session:
            rows = count_calls(session)
        second = [produce_rationale(db_engine, client, work) for work in works]

    # Staged CoT and PoT share their first two stages: those are paid once, replayed after.
    assert requests == rows == 3 * (1 + 1 + 3 + 1)
    assert sim.stats["requests"] == requests  # nothing new was sent
    with Session(db_engine) as session:
        assert count_calls(session) == rows
    assert sum(o.paid_calls for o in second) == 0
    assert all(c.cached for o in second for c in o.calls)
    assert all(o.cost_usd == 0 for o in second)
    assert [o.result for o in second] == [o.result for o in first]
    assert all(isinstance(o.result, KeyPoints) for o in second)


def test_a_new_sample_index_is_a_new_paid_call(sim: SimulatorHandle, db_engine: Engine) -> None:
    item = gsm8k_items(1)[0]
    with make_client(spec_for("openai", sim) + ",seed=11") as client:
        a = produce_rationale(db_engine, client, RationaleWork(item.question, "cot", sample_index=0))
        b = produce_rationale(db_engine, client, RationaleWork(item.question, "cot", sample_index=1))
    assert a.paid_calls == b.paid_calls == 1
    rows = _rows(db_engine)
    assert [r.sample_index for r in rows] == [0, 1]
    # Each sample is sent its own seed, so real providers give distinct, reproducible samples.
    assert [r.options["seed"] for r in rows] == [11, 11]  # the option as configured is recorded
    assert rows[0].fingerprint != rows[1].fingerprint


def test_a_failed_call_is_not_replayed_and_a_later_success_replaces_it(
    sim: SimulatorHandle, db_engine: Engine
) -> None:
    item = gsm8k_items(1)[0]
    spec = spec_for("openai", sim, fault="500*1")
    with make_client(spec, teacher_max_attempts=1) as client:
        failed = produce_rationale(db_engine, client, RationaleWork(item.question, "cot"))
        assert isinstance(failed.result, CallFailure)
        (row,) = _rows(db_engine)
        assert (row.status, row.attempts) == ("failed", 1)
        # Redelivered: the failure is not replayed; the simulator's second attempt succeeds.
        retried = produce_rationale(db_engine, client, RationaleWork(item.question, "cot"))
    assert isinstance(retried.result, KeyPoints) and retried.paid_calls == 1
    (row,) = _rows(db_engine)
    assert (row.status, row.attempts, row.error_kind, row.http_status) == ("ok", 2, None, None)
    assert row.response_text and row.cost_usd is not None


def _new_call(fingerprint: str, status: str, attempts: int = 1, text: str | None = "x") -> NewTeacherCall:
    return NewTeacherCall(
        fingerprint=fingerprint,
        provider="openai",
        model="gpt-4o-mini",
        mode="cot",
        stage_mode="single",
        stage="all",
        prompt_version="kpdd-cot-single-v1+00000000",
        status=status,
        options={"max_tokens": 1024},
        response_text=text,
        attempts=attempts,
        tokens_in=100,
        tokens_out=10,
        cost_usd=Decimal("0.00002100") if status != "failed" else None,
    )


def test_recording_is_an_idempotent_upsert(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        first_id, written = record_call(session, _new_call("a" * 64, "ok", text="first"))
        assert written
    with session_scope(db_engine) as session:  # a redelivered task records the same call again
        again_id, written = record_call(session, _new_call("a" * 64, "ok", text="second"))
    assert again_id == first_id and not written
    with session_scope(db_engine) as session:
        record_call(session, _new_call("b" * 64, "failed", attempts=3, text=None))
        record_call(session, _new_call("b" * 64, "failed", attempts=2, text=None))
    with session_scope(db_engine) as session:
        _, written = record_call(session, _new_call("b" * 64, "ok", attempts=1, text="finally"))
        assert written
    rows = {r.fingerprint[0]: r for r in _rows(db_engine)}
    assert len(rows) == 2
    assert rows["a"].response_text == "first"  # a paid response is never replaced
    assert (rows["b"].status, rows["b"].attempts, rows["b"].response_text) == ("ok", 6, "finally")
    with Session(db_engine) as session:
        assert session.scalar(select(func.count()).select_from(TeacherCall)) == 2


def test_cost_is_computed_from_the_price_table(sim: SimulatorHandle, db_engine: Engine) -> None:
    items = gsm8k_items(2)
    with make_client(spec_for("openai", sim)) as client:
        assert client.price is not None and client.price.key == "openai:gpt-4o-mini*"
        outcomes = [produce_rationale(db_engine, client, RationaleWork(i.question, "cot")) for i in items]
    rows = _rows(db_engine)
    for row, outcome in zip(rows, outcomes, strict=True):
        assert row.tokens_in and row.tokens_out
        expected = (
            Decimal(row.tokens_in) * Decimal("0.15") + Decimal(row.tokens_out) * Decimal("0.60")
        ) / 10**6
        assert row.cost_usd == expected.quantize(Decimal("0.00000001")) > 0
        assert outcome.cost_usd == row.cost_usd
        usage = (row.response or {})["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (row.tokens_in, row.tokens_out)
    with Session(db_engine) as session:
        (summary,) = teacher_cost_summaries(session)
    assert (summary.provider, summary.model, summary.calls, summary.paid_calls) == (
        "openai",
        "gpt-4o-mini",
        2,
        2,
    )
    assert summary.cost_usd == sum((r.cost_usd or Decimal(0)) for r in rows)
    assert summary.tokens_in == sum(r.tokens_in or 0 for r in rows) and summary.unpriced_calls == 0


def test_a_price_file_overrides_the_shipped_table(
    sim: SimulatorHandle, db_engine: Engine, tmp_path: Path
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps({"models": {"openai-compatible:Qwen2.5-72B-Instruct": {"input": 1, "output": 2}}})
    )
    item = gsm8k_items(1)[0]
    with make_client(spec_for("openai-compatible", sim), prices_file=prices) as client:
        outcome = produce_rationale(db_engine, client, RationaleWork(item.question, "cot"))
    (row,) = _rows(db_engine)
    assert row.tokens_in is not None and row.tokens_out is not None
    assert row.cost_usd == (Decimal(row.tokens_in) + 2 * Decimal(row.tokens_out)) / 10**6
    assert outcome.cost_usd == row.cost_usd


def test_an_unpriced_model_has_unknown_cost_never_zero(sim: SimulatorHandle, db_engine: Engine) -> None:
    item = gsm8k_items(1)[0]
    with make_client(spec_for("openai-compatible", sim)) as client:
        assert client.price is None
        outcome = produce_rationale(db_engine, client, RationaleWork(item.question, "cot"))
    assert outcome.paid_calls == 1 and outcome.cost_usd is None
    (row,) = _rows(db_engine)
    assert row.cost_usd is None and row.tokens_in
    with Session(db_engine) as session:
        (summary,) = teacher_cost_summaries(session)
    assert summary.unpriced_calls == 1


def test_price_lookup_takes_the_longest_matching_pattern() -> None:
    prices = load_prices()
    assert prices.price_of("openai", "gpt-4o-mini-2024-07-18").key == "openai:gpt-4o-mini*"  # type: ignore[union-attr]
    assert prices.price_of("openai", "gpt-4o-2024-08-06").key == "openai:gpt-4o*"  # type: ignore[union-attr]
    assert prices.price_of("anthropic", "claude-3-5-haiku-latest").key == "anthropic:claude-3-5-haiku*"  # type: ignore[union-attr]
    assert prices.price_of("sim", "gold").input_per_mtok == 0  # type: ignore[union-attr]
    assert prices.price_of("openai-compatible", "Qwen2.5-72B-Instruct") is None
    assert ModelPrice("k", Decimal("0.15"), Decimal("0.6")).cost(1_000_000, 1_000_000) == Decimal("0.75")


def test_batch_prices_are_half_unless_the_table_gives_them(tmp_path: Path) -> None:
    price = ModelPrice("k", Decimal("0.15"), Decimal("0.6"))
    assert price.cost(1_000_000, 1_000_000, batch=True) == Decimal("0.375")  # half of 0.75
    table = tmp_path / "prices.json"
    entry = '{"input": 1, "output": 2, "batch_input": 0.4, "batch_output": 1.6}'
    table.write_text('{"models": {"openai:x": ' + entry + "}}")
    given = load_prices(table).price_of("openai", "x")
    assert given is not None and given.cost(1_000_000, 1_000_000, batch=True) == Decimal("2.0")
    assert given.cost(1_000_000, 1_000_000) == Decimal("3")
    table.write_text('{"models": {"openai:x": {"input": 1, "output": 2, "batch_input": -1}}}')
    with pytest.raises(ConfigError, match="negative"):
        load_prices(table)


def test_a_bad_price_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "prices.json"
    bad.write_text('{"models": {"gpt-4o": {"input": 1, "output": 2}}}')
    with pytest.raises(ConfigError, match="PROVIDER:MODEL"):
        load_prices(bad)
    bad.write_text('{"models": {"openai:x": {"input": "cheap", "output": 2}}}')
    with pytest.raises(ConfigError, match="numeric 'input' and 'output'"):
        load_prices(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_prices(tmp_path / "missing.json")


def test_the_fingerprint_covers_what_is_sent_and_nothing_else() -> None:
    prompt = render_prompt("Tom has 3 apples and buys 2 more. How many apples does he have?", "cot")
    base = request_fingerprint("openai", "gpt-4o-mini", prompt, {"max_tokens": 1024}, 0)
    assert base == request_fingerprint("openai", "gpt-4o-mini", prompt, {"max_tokens": 1024}, 0)
    other_prompt = render_prompt("Tom has 3 apples and buys 4 more. How many apples does he have?", "cot")
    variants = [
        request_fingerprint("anthropic", "gpt-4o-mini", prompt, {"max_tokens": 1024}, 0),
        request_fingerprint("openai", "gpt-4o", prompt, {"max_tokens": 1024}, 0),
        request_fingerprint("openai", "gpt-4o-mini", prompt, {"max_tokens": 512}, 0),
        request_fingerprint("openai", "gpt-4o-mini", prompt, {"max_tokens": 1024, "temperature": 0.2}, 0),
        request_fingerprint("openai", "gpt-4o-mini", prompt, {"max_tokens": 1024}, 1),
        request_fingerprint("openai", "gpt-4o-mini", other_prompt, {"max_tokens": 1024}, 0),
        request_fingerprint(
            "openai", "gpt-4o-mini", render_prompt(prompt.messages[-1]["content"][9:], "pot"), {}, 0
        ),
    ]
    assert len({base, *variants}) == len(variants) + 1
