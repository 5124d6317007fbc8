"""The response cache never keeps a wrong answer silently: `--refresh` replaces cached responses,
and a rationale's identity holds its generation options (`options_key`), so a job at other
options makes its own rationales unless `--reuse-any-options` is given. In-process jobs on SQLite
and Postgres, against the teacher simulator over real HTTP, through the real CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from db.models import GenerationJob, Rationale, TeacherCall
from services.generation.params import options_key, teacher_options_key
from services.teachers.simulator.faults import FaultRates
from services.teachers.spec import parse_spec
from tests.conftest import CliResult
from tests.services.export.conftest import read_manifest


def _rows(db_url: str, model: type, *where: Any) -> list[Any]:
    engine = create_engine(db_url)
    with Session(engine) as session:
        rows = list(session.scalars(select(model).where(*where).order_by(model.id)))  # type: ignore[attr-defined]
    engine.dispose()
    return rows


def _generate(kpdd: Callable[..., CliResult], *extra: str) -> dict[str, Any]:
    result = kpdd("generate", "--corpus", "g", "--mode", "cot", "--json", *extra)
    assert result.code == 0, result.err
    status: dict[str, Any] = orjson.loads(result.out)
    assert status["status"] == "completed", status
    return status


def _job_params(db_url: str) -> list[dict[str, Any]]:
    return [job.params for job in _rows(db_url, GenerationJob)]


def test_options_key_is_a_short_stable_hash_of_the_options_that_change_output() -> None:
    default = teacher_options_key(parse_spec("sim:gold"))
    assert len(default) == 16 and default != ""
    assert default == options_key({"max_tokens": 1024})  # the default options, spelt out
    assert default == teacher_options_key(parse_spec("sim:gold,max_tokens=1024,rpm=100"))  # limits: no
    assert default == teacher_options_key(parse_spec("openai:gpt-4o-mini@http://elsewhere/v1"))  # URL: no
    warm = teacher_options_key(parse_spec("sim:gold,temperature=0.5"))
    assert warm != default and warm == teacher_options_key(parse_spec("sim:gold,temperature=0.50"))
    others = {
        teacher_options_key(parse_spec(f"sim:gold,{option}"))
        for option in ("top_p=0.9", "max_tokens=800", "seed=7", "temperature=0.7")
    }
    assert len(others | {default, warm}) == 6
    assert options_key({"b": 1, "a": 2}) == options_key({"a": 2, "b": 1})


def test_refresh_replaces_cached_wrong_answers_and_later_jobs_replay_the_new_ones(
    kpdd: Callable[..., CliResult],
    db_url: str,
    small_corpus: Callable[..., str],
    simulator: Callable[..., str],
) -> None:
    small_corpus(4)
    wrong = simulator(faults=FaultRates(wrong=1.0))  # every answer off by one
    right = simulator()
    first = _generate(kpdd, "--teacher", f"sim:gold@{wrong}")
    assert first["rationales"][0]["by_verdict"] == {"invalid": 4}
    calls = _rows(db_url, TeacherCall)
    assert len(calls) == 4
    ids = {c.id for c in calls}

    # Without --refresh the cache keeps serving the wrong answers: nothing is asked again.
    _generate(kpdd, "--teacher", f"sim:gold@{right}")
    assert {c.id: c.response_text for c in _rows(db_url, TeacherCall)} == {
        c.id: c.response_text for c in calls
    }
    assert {r.verdict for r in _rows(db_url, Rationale)} == {"invalid"}

    # --refresh: every call is sent again and its response replaces the stored one (same rows).
    _generate(kpdd, "--teacher", f"sim:gold@{right}", "--refresh")
    assert _job_params(db_url)[-1]["refresh"] is True
    assert [p["refresh"] for p in _job_params(db_url)[:-1]] == [False, False]
    after = _rows(db_url, TeacherCall)
    assert {c.id for c in after} == ids  # replaced in place: the same ids, no new rows
    assert all(c.status == "ok" and c.attempts == 1 for c in after)
    for old, new in zip(calls, after, strict=True):
        assert old.response_text != new.response_text
    rationales = _rows(db_url, Rationale)
    assert len(rationales) == 4 and {r.verdict for r in rationales} == {"valid"}
    assert {i for r in rationales for i in r.call_ids} == ids

    # A later probe replays the new responses: nothing paid, every answer right.
    probe = kpdd("probe", "--teacher", f"sim:gold@{wrong}", "--corpus", "g", "--limit", "4", "--json")
    assert probe.code == 0, probe.err
    summary = orjson.loads(probe.out)["summary"]
    assert (summary["paid_calls"], summary["cached_calls"], summary["right"]) == (0, 4, 4)


def test_probe_refresh_and_a_failed_refresh_keeps_the_stored_response(
    kpdd: Callable[..., CliResult],
    kpdd_env: Callable[..., None],
    db_url: str,
    small_corpus: Callable[..., str],
    simulator: Callable[..., str],
) -> None:
    kpdd_env(database_url=db_url, teacher_max_attempts="1")
    small_corpus(2)
    wrong = simulator(faults=FaultRates(wrong=1.0))
    right = simulator()
    broken = simulator(faults=FaultRates(server_error=1.0))

    def probe(url: str, *extra: str) -> dict[str, Any]:
        result = kpdd(
            "probe", "--teacher", f"sim:gold@{url}", "--corpus", "g", "--limit", "2", "--json", *extra
        )
        assert result.code in (0, 1), result.err
        summary: dict[str, Any] = orjson.loads(result.out)["summary"]
        return summary

    assert probe(wrong)["wrong"] == 2
    assert probe(right)["wrong"] == 2  # replayed from the cache
    stored = {c.id: c.response_text for c in _rows(db_url, TeacherCall)}
    failed = probe(broken, "--refresh")  # the refresh fails: the stored responses stay
    assert failed["call_failures"] == 2 and failed["paid_calls"] == 0
    assert {c.id: (c.status, c.response_text) for c in _rows(db_url, TeacherCall)} == {
        i: ("ok", text) for i, text in stored.items()
    }
    fixed = probe(right, "--refresh")
    assert (fixed["paid_calls"], fixed["cached_calls"], fixed["right"]) == (2, 0, 2)
    assert probe(wrong)["right"] == 2  # later probes replay the refreshed responses
    assert len(_rows(db_url, TeacherCall)) == 2


def test_other_generation_options_make_their_own_rationales_unless_reuse_is_asked(
    kpdd: Callable[..., CliResult], db_url: str, small_corpus: Callable[..., str], tmp_path: Path
) -> None:
    small_corpus(4)
    _generate(kpdd, "--teacher", "sim:gold")
    default_key = teacher_options_key(parse_spec("sim:gold"))
    assert {r.options_key for r in _rows(db_url, Rationale)} == {default_key}
    assert len(_rows(db_url, TeacherCall)) == 4

    # At temperature 0.5 the stored rationales (default temperature) are not reused.
    warm = _generate(kpdd, "--teacher", "sim:gold", "-O", "temperature=0.5")
    assert sum(r["total"] for r in warm["rationales"]) == 4  # its figures: only its own
    warm_key = teacher_options_key(parse_spec("sim:gold,temperature=0.5"))
    rationales = _rows(db_url, Rationale)
    assert len(rationales) == 8
    assert sorted(r.options_key for r in rationales) == sorted([default_key] * 4 + [warm_key] * 4)
    calls = _rows(db_url, TeacherCall)
    assert len(calls) == 8 and {c.options.get("temperature") for c in calls} == {None, 0.5}

    # Asked again at 0.5: its own rationales are reused, nothing is called.
    _generate(kpdd, "--teacher", "sim:gold", "-O", "temperature=0.5")
    assert len(_rows(db_url, Rationale)) == 8 and len(_rows(db_url, TeacherCall)) == 8

    # At 0.7 with --reuse-any-options: the stored ones are reused, nothing new is made.
    reusing = _generate(kpdd, "--teacher", "sim:gold", "-O", "temperature=0.7", "--reuse-any-options")
    assert sum(r["total"] for r in reusing["rationales"]) == 8
    assert len(_rows(db_url, Rationale)) == 8 and len(_rows(db_url, TeacherCall)) == 8
    params = _job_params(db_url)
    assert [p["reuse_any_options"] for p in params] == [False, False, False, True]

    # What `kpdd export` makes of two rationales per (problem, sample) at different options:
    # both are exported (the same text here: the simulator ignores temperature), and
    # `--dedupe` keeps one of each pair.
    plain = kpdd("export", "--out", tmp_path / "plain")
    assert plain.code == 0, plain.err
    assert read_manifest(tmp_path / "plain")["counts"]["rows"] == 8
    deduped = kpdd("export", "--out", tmp_path / "deduped", "--dedupe")
    assert deduped.code == 0, deduped.err
    manifest = read_manifest(tmp_path / "deduped")
    assert manifest["counts"]["rows"] == 4 and manifest["filters"]["exact_duplicates"] == 4


def test_legacy_rationales_without_options_are_reused_only_when_asked(
    kpdd: Callable[..., CliResult], db_url: str, small_corpus: Callable[..., str]
) -> None:
    small_corpus(3)
    _generate(kpdd, "--teacher", "sim:gold")
    engine = create_engine(db_url)
    with Session(engine) as session, session.begin():  # as stored before migration 0006
        session.execute(update(Rationale).values(options_key=""))
        session.execute(update(Rationale).values(verdict="invalid"))
    engine.dispose()

    _generate(kpdd, "--teacher", "sim:gold", "--reuse-any-options")
    assert [r.options_key for r in _rows(db_url, Rationale)] == ["", "", ""]

    # Without the flag the legacy rows are not this job's options: it makes its own (the calls
    # replay from the cache, whose fingerprints hold the options: nothing is paid again).
    _generate(kpdd, "--teacher", "sim:gold")
    rationales = _rows(db_url, Rationale)
    assert [r.verdict for r in rationales] == ["invalid"] * 3 + ["valid"] * 3
    assert sorted(r.options_key for r in rationales) == sorted(
        [""] * 3 + [teacher_options_key(parse_spec("sim:gold"))] * 3
    )
    assert len(_rows(db_url, TeacherCall)) == 3
