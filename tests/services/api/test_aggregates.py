"""The dashboard's aggregates on SQLite and Postgres (percentiles and time buckets are computed
differently on each) agree with plain counts of the same rows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.models import Rationale, TeacherCall
from db.queries import dashboard as q
from tests.conftest import CliResult


def test_aggregates_match_plain_counts(
    kpdd: Callable[..., CliResult],
    db_url: str,
    small_corpus: Callable[..., str],
    simulator: Callable[..., str],
) -> None:
    small_corpus(10)
    url = simulator(latency_ms=5)
    result = kpdd("generate", "--corpus", "g", "--teacher", f"sim:gold@{url}", "--mode", "both", "--json")
    assert result.code == 0, result.err
    engine = create_engine(db_url)
    with Session(engine) as session:
        yields = q.yields(session)
        calls = q.call_figures(session)
        points = q.throughput(session, datetime.now(UTC) - timedelta(hours=1), 60)
        latencies = sorted(int(v or 0) for v in session.scalars(select(TeacherCall.latency_ms)))
        valid = session.scalar(select(func.count()).where(Rationale.verdict == "valid"))
        total = session.scalar(select(func.count()).select_from(Rationale))
    engine.dispose()
    assert {(y.mode, y.generated) for y in yields} == {("cot", 10), ("pot", 10)}
    assert sum(y.valid for y in yields) == valid
    figures = calls[("sim", "gold")]
    assert figures["calls"] == 20 and figures["rate_limited"] == 0
    assert latencies[0] <= float(figures["p50_ms"] or 0) <= float(figures["p99_ms"] or 0) <= latencies[-1]
    assert sum(n for _, n in points) == total
    assert all(bucket % 60 == 0 for bucket, _ in points)
