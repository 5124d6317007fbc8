"""`kpdd cache`: the response cache shown by teacher, prompt version, status and age, and pruned
by teacher, prompt version and age, never an in-flight entry, saying what becomes of the
rationales made from what it prunes. Real CLI on SQLite and Postgres, calls made through the
embedded teacher simulator over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import create_engine, func, insert, select, update
from sqlalchemy.orm import Session

from db.models import Rationale, TeacherCall
from services.cli.cache_cmd import age_text, parse_age
from services.kpdd.prompts import prompt_set_version
from tests.conftest import CliResult

COT = prompt_set_version("cot", "single")
POT = prompt_set_version("pot", "single")


@pytest.fixture
def cached(kpdd: Callable[..., CliResult], datasets_dir: Path, tmp_path: Path) -> Callable[..., CliResult]:
    """4 GSM8K problems with a CoT and a PoT rationale each by `sim:gold`: 8 cached responses."""
    lines = (datasets_dir / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    path = tmp_path / "g.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert kpdd("ingest", "gsm8k", path, "--corpus", "g").code == 0
    result = kpdd("generate", "--corpus", "g", "--teacher", "sim:gold", "--mode", "both", "--json")
    assert result.code == 0, result.err
    return kpdd


def _calls(db_url: str) -> list[tuple[int, str, str]]:
    engine = create_engine(db_url)
    with Session(engine) as session:
        rows = session.execute(
            select(TeacherCall.id, TeacherCall.prompt_version, TeacherCall.status).order_by(TeacherCall.id)
        ).all()
    engine.dispose()
    return [(int(i), str(v), str(s)) for i, v, s in rows]


def _execute(db_url: str, *statements: Any) -> None:
    engine = create_engine(db_url)
    with Session(engine) as session, session.begin():
        for statement in statements:
            session.execute(statement)
    engine.dispose()


def _json(result: CliResult) -> dict[str, Any]:
    assert result.code == 0, result.err
    document: dict[str, Any] = orjson.loads(result.out)
    return document


def test_parse_age_and_age_text() -> None:
    assert parse_age("7d") == timedelta(days=7)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age(" 1.5d ") == timedelta(hours=36)
    assert parse_age("30m") == timedelta(minutes=30) and parse_age("2w") == timedelta(days=14)
    now = datetime(2026, 12, 3, tzinfo=UTC)
    assert age_text(now - timedelta(seconds=42), now) == "42s"
    assert age_text(now - timedelta(hours=5, minutes=3), now) == "5h"
    assert age_text(now - timedelta(days=9), now) == "9d" and age_text(None, now) == "-"


def test_cache_shows_entries_by_teacher_prompt_version_status_and_age(
    cached: Callable[..., CliResult], db_url: str
) -> None:
    shown = _json(cached("cache", "--json"))
    assert shown["entries"] == 8 and shown["by_status"] == {"ok": 8}
    assert shown["by_teacher"] == {"sim:gold": 8}
    groups = {(g["teacher"], g["prompt_version"], g["status"]): g for g in shown["groups"]}
    assert set(groups) == {("sim:gold", COT, "ok"), ("sim:gold", POT, "ok")}
    assert all(
        g["entries"] == 4 and 0 <= g["newest_age_s"] <= g["oldest_age_s"] < 600 for g in groups.values()
    )

    only_pot = _json(cached("cache", "show", "--prompt-version", POT, "--json"))
    assert only_pot["entries"] == 4 and [g["prompt_version"] for g in only_pot["groups"]] == [POT]
    old_ids = [i for i, version, _ in _calls(db_url) if version == POT]
    ten_days = datetime.now(UTC) - timedelta(days=10)
    _execute(db_url, update(TeacherCall).where(TeacherCall.id.in_(old_ids)).values(updated_at=ten_days))
    older = _json(cached("cache", "--older-than", "7d", "--json"))
    assert older["entries"] == 4 and older["groups"][0]["oldest_age_s"] >= 10 * 86400 - 60

    human = cached("cache")
    assert human.code == 0, human.err
    assert "response cache: 8 entries (8 ok)" in human.out
    assert COT in human.out and POT in human.out and "10d" in human.out


def test_prune_by_teacher_prompt_version_and_age_keeps_rationales_and_in_flight_entries(
    cached: Callable[..., CliResult], db_url: str
) -> None:
    before = _calls(db_url)
    # Dry run: counts, deletes nothing, says what happens to the rationales.
    dry = _json(
        cached("cache", "prune", "--teacher", "sim:gold", "--prompt-version", COT, "--dry-run", "--json")
    )
    assert dry == {
        "pruned": 4,
        "dry_run": True,
        "rationales_referencing": 4,
        "in_flight_kept": 0,
        "filter": {"teachers": ["sim:gold"], "prompt_versions": [COT], "statuses": [], "older_than": None},
    }
    assert _calls(db_url) == before

    # The PoT responses are 10 days old; one more PoT request is in flight (never pruned).
    pot_ids = [i for i, version, _ in before if version == POT]
    ten_days = datetime.now(UTC) - timedelta(days=10)
    in_flight = {
        "fingerprint": "f" * 64,
        "provider": "sim",
        "model": "gold",
        "mode": "pot",
        "stage_mode": "single",
        "stage": "all",
        "prompt_version": POT,
        "options": {"max_tokens": 1024},
        "status": "in_flight",
        "updated_at": ten_days,
    }
    _execute(
        db_url,
        update(TeacherCall).where(TeacherCall.id.in_(pot_ids)).values(updated_at=ten_days),
        insert(TeacherCall).values(**in_flight),
    )
    pruned = cached("cache", "prune", "--teacher", "sim:gold", "--older-than", "7d")
    assert pruned.code == 0, pruned.err
    assert "pruned 4 cached response(s)" in pruned.out
    assert "4 rationale(s) were made from them: they keep their text" in pruned.out
    assert "so making them again pays again" in pruned.out
    assert "1 matching entry is in flight and kept" in pruned.out
    left = _calls(db_url)
    assert [(v, s) for _, v, s in left] == [(COT, "ok")] * 4 + [(POT, "in_flight")]

    # The PoT rationales are still there, with their text and their (now dangling) call ids.
    engine = create_engine(db_url)
    with Session(engine) as session:
        pot = session.scalars(select(Rationale).where(Rationale.mode == "pot")).all()
    engine.dispose()
    assert len(pot) == 4 and all(r.program and r.verdict == "valid" for r in pot)
    assert {i for r in pot for i in r.call_ids} == set(pot_ids)

    # Asking those requests again pays again.
    probe = cached(
        "probe", "--teacher", "sim:gold", "--corpus", "g", "--limit", "4", "--mode", "pot", "--json"
    )
    summary = _json(probe)["summary"]
    assert (summary["paid_calls"], summary["cached_calls"]) == (4, 0)

    # --all empties the cache except what is in flight.
    everything = _json(cached("cache", "prune", "--all", "--json"))
    assert everything["pruned"] == 8 and everything["in_flight_kept"] == 1
    assert [s for _, _, s in _calls(db_url)] == ["in_flight"]


def test_prune_needs_a_filter_and_names_must_exist(cached: Callable[..., CliResult], db_url: str) -> None:
    bare = cached("cache", "prune")
    assert bare.code == 2 and "give --teacher, --prompt-version, --status or --older-than" in bare.err
    typo = cached("cache", "prune", "--teacher", "sim:glod")
    assert typo.code == 2 and "no cached responses of sim:glod (teachers in the cache: sim:gold)" in typo.err
    version = cached("cache", "prune", "--prompt-version", "kpdd-cot-single-v0")
    assert version.code == 2 and COT in version.err
    assert cached("cache", "prune", "--older-than", "7 days").code == 2
    assert cached("cache", "prune", "--teacher", "gold").code == 2
    assert cached("cache", "--dry-run").code == 2
    engine = create_engine(db_url)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(TeacherCall)) == 8
    engine.dispose()
