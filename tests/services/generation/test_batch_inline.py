"""Batch jobs in the embedded default (no broker): `kpdd generate --transport batch` runs the
chunks, sends their requests as provider batches to the simulator through the official SDK,
polls them here, and finishes the job, on SQLite and on Postgres."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.models import BatchRequest, ProviderBatch, Rationale, TeacherCall
from tests.conftest import CliResult


@pytest.fixture
def batch_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps({"models": {"openai:gold*": {"input": 2.0, "output": 8.0}}}), encoding="utf-8"
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-inline-batch")
    monkeypatch.setenv("KPDD_PRICES_FILE", str(prices))
    monkeypatch.setenv("KPDD_BATCH_POLL_INTERVAL_S", "0.2")


def test_an_embedded_batch_job_with_until_valid_runs_in_rounds(
    kpdd: Callable[..., CliResult],
    db_url: str,
    small_corpus: Callable[..., str],
    simulator: Callable[..., str],
    batch_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.config import get_settings

    small_corpus(6)
    url = simulator(batch_delay_s=0.3)
    monkeypatch.setenv("KPDD_BATCH_POLL_INTERVAL_S", "0.2")
    get_settings.cache_clear()
    # `+fault=wrong*1`: the simulator answers the first attempt of each distinct body wrongly;
    # samples 0 and 1 send the same body (no seed), so sample 0 is invalid and sample 1 valid.
    teacher = f"openai:gold+fault=wrong*1@{url}/v1"
    result = kpdd(
        "generate", "--corpus", "g", "--teacher", teacher, "--transport", "batch", "--mode", "cot",
        "--samples", "1", "--until-valid", "1", "--max-attempts", "3", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    status = orjson.loads(result.out)
    assert status["status"] == "completed"
    assert status["problems"]["by_state"] == {"done": 6}
    assert status["rationales"][0]["by_verdict"] == {"valid": 6, "invalid": 6}
    batches = status["batches"]
    assert batches["answered"] == batches["requests"] == 12 and batches["waiting_chunks"] == 0
    assert Decimal(batches["saved_usd"]) > 0
    engine = create_engine(db_url)
    with Session(engine) as session:
        sizes = session.scalars(select(ProviderBatch.requests).order_by(ProviderBatch.id)).all()
        assert sizes == [6, 6]  # round 1: sample 0 of each problem; round 2: sample 1 (until valid)
        assert session.scalar(select(func.count()).select_from(Rationale)) == 12
        calls = session.scalars(select(TeacherCall)).all()
        assert len(calls) == 12 and all(c.batch_id is not None for c in calls)
        assert {r.state for r in session.scalars(select(BatchRequest))} == {"done"}
    engine.dispose()

    again = kpdd(  # everything is in the cache now: nothing is queued, nothing is sent
        "generate", "--corpus", "g", "--teacher", teacher, "--transport", "batch", "--mode", "cot",
        "--until-valid", "1", "--max-attempts", "3", "--json",
    )  # fmt: skip
    assert again.code == 0, again.err
    assert orjson.loads(again.out)["batches"] is None


def test_a_budgeted_batch_job_holds_each_batch_in_full_and_stops_at_its_budget(
    kpdd: Callable[..., CliResult],
    db_url: str,
    small_corpus: Callable[..., str],
    simulator: Callable[..., str],
    batch_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.config import get_settings

    small_corpus(12)
    url = simulator(batch_delay_s=0.2)
    monkeypatch.setenv("KPDD_BATCH_MAX_REQUESTS", "4")  # small batches: the budget meets them one by one
    get_settings.cache_clear()
    teacher = f"openai:gold@{url}/v1"
    # Without history a request is held at max_tokens=1024 out ($0.0041 at half of $8/M) plus
    # its prompt, so the first batch holds one request; later estimates follow the answers'
    # lengths, and $0.006 runs out before the 12 problems' requests (about $0.0008 each) are sent.
    result = kpdd(
        "generate", "--corpus", "g", "--teacher", teacher, "--transport", "batch", "--mode", "cot",
        "--budget-usd", "0.006", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    status = orjson.loads(result.out)
    assert status["status"] == "budget_exhausted", status
    spent = Decimal(status["spent_usd"])
    assert 0 < spent <= Decimal("0.006")
    assert Decimal(status["batches"]["cost_usd"]) == spent  # the batches' cost is what was spent
    assert Decimal(status["in_flight_usd"]) == 0  # every batch hold is settled
    by_state = status["problems"]["by_state"]
    done, budget = by_state.get("done", 0), by_state.get("budget", 0)
    assert done >= 1 and budget > 0 and done + budget == 12
    engine = create_engine(db_url)
    with Session(engine) as session:
        sizes = session.scalars(select(ProviderBatch.requests).order_by(ProviderBatch.id)).all()
        reserved = session.scalars(select(ProviderBatch.reserved_usd).order_by(ProviderBatch.id)).all()
        assert all(n <= 4 for n in sizes) and sum(sizes) == done
        assert all(r is not None and r > 0 for r in reserved)  # each held in full before it was sent
        assert session.scalar(select(func.count()).select_from(TeacherCall)) == done
    engine.dispose()
