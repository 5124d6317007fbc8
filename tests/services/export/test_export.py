"""`kpdd export` end to end on SQLite and Postgres: a snapshot of real simulator rationales, its
manifest, card and database record; determinism; selection filters; bad input."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from db.models import Problem, Rationale, Snapshot
from services.kpdd.formatting import format_student_input
from tests.conftest import CliResult
from tests.services.export.conftest import read_manifest, read_rows, snapshot_bytes


def _valid_ids(db_url: str) -> set[int]:
    engine = create_engine(db_url)
    with Session(engine) as session:
        ids = set(session.scalars(select(Rationale.id).where(Rationale.verdict == "valid")))
    engine.dispose()
    return ids


def test_export_writes_a_verified_snapshot_and_records_it(
    kpdd: Callable[..., CliResult], db_url: str, make_rationales: Callable[..., None], tmp_path: Path
) -> None:
    make_rationales(kpdd, 6)
    out = tmp_path / "snap"
    result = kpdd("export", "--out", out, "--json")
    assert result.code == 0, result.err
    summary = orjson.loads(result.out)
    manifest = read_manifest(out)
    assert summary["snapshot_id"] == manifest["snapshot_id"]
    assert manifest["snapshot_id"].startswith("snap-")

    # 6 problems x 2 modes x 2 samples valid; 6 wrong-answer CoT rationales filtered out.
    counts = manifest["counts"]
    assert counts["rows"] == 24 and counts["problems"] == 6
    assert counts["by_split"] == {"train": {"rows": 24, "problems": 6}}
    assert counts["by_corpus"] == {"g": 24}
    assert counts["by_corpus_split"] == {"g/train": 24}
    assert counts["by_teacher"] == {"sim:gold": 24}
    assert counts["by_mode"] == {"cot": 12, "pot": 12}
    assert counts["by_verdict"] == {"valid": 24}
    assert manifest["filters"] == {
        "available_by_verdict": {"invalid": 6, "valid": 24},
        "selected": 24,
        "decontaminated": 0,
        "exact_duplicates": 0,
        "near_duplicates": 0,
        "over_cap": 0,
        "exported": 24,
    }
    versions = manifest["prompt_versions"]
    assert sorted(versions.values()) == [12, 12]
    assert any(v.startswith("kpdd-cot") for v in versions) and any(v.startswith("kpdd-pot") for v in versions)
    assert manifest["spec"]["select"]["verdict"] == "valid"
    assert manifest["decontamination"]["datasets"] == [] and manifest["decontamination"]["dropped"] == []
    assert set(manifest["schema"]) == {"rationales", "end_to_end"}
    assert manifest["student_inputs"] == {
        "format_version": 2,
        "header": "[TASK | KPDD-CoT|KPDD-PoT]",
        "tasks": {"end_to_end": "end-to-end"},
    }

    # Every file is listed with its true hash and row count, and nothing else is there.
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == {"data/rationales/train.parquet", "data/end_to_end/train.parquet", "README.md"}
    for path, entry in listed.items():
        assert hashlib.sha256((out / path).read_bytes()).hexdigest() == entry["sha256"]
        assert (out / path).stat().st_size == entry["bytes"]
    assert listed["data/rationales/train.parquet"]["rows"] == 24
    assert listed["data/end_to_end/train.parquet"]["rows"] == 24
    assert set(snapshot_bytes(out)) == {*listed, "manifest.json"}

    rows = read_rows(out, "rationales")
    assert {r["rationale_id"] for r in rows} == _valid_ids(db_url)
    assert [r["problem_id"] for r in rows] == sorted(r["problem_id"] for r in rows)
    engine = create_engine(db_url)
    with Session(engine) as session:
        questions = dict(session.execute(select(Problem.id, Problem.question)).tuples().all())
    engine.dispose()
    for row in rows:
        assert row["question"] == questions[row["problem_id"]]
        assert row["verdict"] == "valid" and row["judged_by"] == "gold" and row["verdict_kind"] == "match"
        assert row["teacher"] == "sim:gold" and row["corpus"] == "g" and row["split"] == "train"
        assert row["core_question"] and row["solving_info"] and row["solution"]
        assert row["answer"] and row["gold_normalised"]
        if row["mode"] == "pot":
            assert "ans" in row["solution"] and row["final_answer_text"] is None
        else:
            assert row["final_answer_text"]

    by_id = {r["rationale_id"]: r for r in rows}
    for task in read_rows(out, "end_to_end"):
        source = by_id[task["rationale_id"]]
        assert task["input"] == format_student_input("end-to-end", source["mode"], source["question"])
        assert task["target"].startswith(f"Core question: {source['core_question']}")
        assert "\n\nProblem-solving information:\n- " in task["target"]
        assert ("```python" in task["target"]) == (source["mode"] == "pot")

    card = (out / "README.md").read_text(encoding="utf-8")
    assert (
        manifest["snapshot_id"] in card
        and "configs:" in card
        and "path: data/end_to_end/train.parquet" in card
    )

    verify = kpdd("snapshot", "verify", out)
    assert verify.code == 0, verify.err
    assert "OK" in verify.out

    listing = orjson.loads(kpdd("snapshots", "--json").out)["snapshots"]
    assert len(listing) == 1
    item = listing[0]
    assert item["snapshot_id"] == manifest["snapshot_id"] and item["path"] == str(out)
    assert item["rows"] == 24 and item["present"] is True
    assert item["manifest_sha256"] == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]

    if importlib.util.find_spec("datasets") is not None:  # optional: not a dependency of kpdd
        from datasets import load_dataset

        ds = load_dataset("parquet", data_files={"train": str(out / "data/rationales/train.parquet")})
        assert ds["train"].num_rows == 24


def test_same_state_and_filters_give_byte_identical_snapshots(
    kpdd: Callable[..., CliResult], make_rationales: Callable[..., None], tmp_path: Path
) -> None:
    make_rationales(kpdd, 6)
    flags = [
        ["--dedupe", "--max-per-problem", "1", "--decontaminate", "gsm8k-test", "--val-fraction", "0.5"],
        ["--layout", "cascade", "--format", "jsonl", "--verdict", "all"],
        ["--layout", "two-stage", "--verdict", "all", "--val-fraction", "0.5"],
        ["--layout", "two-stage", "--format", "jsonl", "--dedupe", "--max-per-problem", "1"],
    ]
    ids = []
    for i, extra in enumerate(flags):
        first, second = tmp_path / f"a{i}", tmp_path / f"b{i}"
        assert kpdd("export", "--out", first, *extra).code == 0
        assert kpdd("export", "--out", second, *extra).code == 0
        assert snapshot_bytes(first) == snapshot_bytes(second)  # manifest and card included
        ids.append(read_manifest(first)["snapshot_id"])
    assert len(set(ids)) == len(ids)
    listing = orjson.loads(kpdd("snapshots", "--json").out)["snapshots"]
    assert sorted(s["snapshot_id"] for s in listing) == sorted(ids * 2)


def test_selection_by_corpus_teacher_mode_verdict_and_job(
    sqlite_kpdd: Callable[..., CliResult],
    sqlite_url: str,
    make_rationales: Callable[..., None],
    tmp_path: Path,
) -> None:
    kpdd = sqlite_kpdd
    make_rationales(kpdd, 4, name="g")  # jobs 1 (sim:gold) and 2 (wrong answers)
    make_rationales(kpdd, 3, name="h", offset=100, samples=1, wrong=False)  # job 3

    def export(name: str, *flags: str) -> dict[str, Any]:
        result = kpdd("export", "--out", tmp_path / name, *flags)
        assert result.code == 0, result.err
        counts: dict[str, Any] = read_manifest(tmp_path / name)["counts"]
        return counts

    assert export("all")["by_corpus"] == {"g": 16, "h": 6}
    assert export("h", "--corpus", "h")["by_corpus"] == {"h": 6}
    pot = export("pot", "--mode", "pot")
    assert pot["by_mode"] == {"pot": 11}
    every = export("every", "--verdict", "all")
    assert every["by_verdict"] == {"invalid": 4, "valid": 22}
    wrong = export("wrong", "--teacher", "sim:gold+fault=wrong", "--verdict", "all")
    assert wrong["by_teacher"] == {"sim:gold+fault=wrong": 4} and wrong["by_verdict"] == {"invalid": 4}
    job1 = export("job1", "--job", "1")
    assert job1["by_corpus"] == {"g": 16} and job1["by_teacher"] == {"sim:gold": 16}
    assert export("job13", "--job", "1", "3")["rows"] == 22
    # Job 2 holds only invalid rationales: with the default verdict nothing matches (bad input).
    nothing = kpdd("export", "--out", tmp_path / "job2", "--job", "2")
    assert nothing.code == 2 and "no rationales match" in nothing.err and "invalid 4" in nothing.err
    assert not (tmp_path / "job2").exists()

    # A later job over the same problems reuses the stored rationales (it pays for nothing), and
    # its scope still exports them.
    again = kpdd("generate", "--corpus", "h", "--teacher", "sim:gold", "--mode", "both", "--json")
    assert again.code == 0
    job4 = orjson.loads(again.out)["job_id"]
    assert export("job4", "--job", str(job4))["rows"] == 6


def test_bad_input_exits_2_and_writes_nothing(
    sqlite_kpdd: Callable[..., CliResult], make_rationales: Callable[..., None], tmp_path: Path
) -> None:
    kpdd = sqlite_kpdd
    make_rationales(kpdd, 2, wrong=False)
    out = tmp_path / "snap"
    cases = [
        (["--job", "99"], "no generation job 99"),
        (["--corpus", "nope"], "no corpus named 'nope'"),
        (["--teacher", "sim:nobody"], "no rationales by sim:nobody"),
        (["--teacher", "sim:gold,temperature=0.2"], "PROVIDER:MODEL only"),
        (["--teacher", "bogus:x"], "unknown provider"),
        (["--decontaminate", "no-such-set"], "not an evaluation set"),
        (["--decontaminate", "g/test"], "has no split 'test'"),
        (["--val-fraction", "1.5"], "--val-fraction"),
        (["--max-per-problem", "0"], "--max-per-problem"),
        (["--near-duplicate-threshold", "0"], "--near-duplicate-threshold"),
        (["--mode", "sql"], "invalid choice"),
    ]
    for flags, message in cases:
        result = kpdd("export", "--out", out, *flags)
        assert result.code == 2, (flags, result.err)
        assert message in result.err, (flags, result.err)
        assert not out.exists()
    assert orjson.loads(kpdd("snapshots", "--json").out) == {"snapshots": []}

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = kpdd("export", "--out", out)
    assert result.code == 2 and "already exists and is not empty" in result.err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert kpdd("export", "--out", empty).code == 0  # an empty directory may be filled
    assert (empty / "manifest.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert kpdd("snapshot", "verify", tmp_path / "missing").code == 2


def test_snapshot_record_matches_the_manifest(
    sqlite_kpdd: Callable[..., CliResult],
    sqlite_url: str,
    make_rationales: Callable[..., None],
    tmp_path: Path,
) -> None:
    make_rationales(sqlite_kpdd, 2, wrong=False)
    assert sqlite_kpdd("export", "--out", tmp_path / "s", "--val-fraction", "0.3").code == 0
    manifest = read_manifest(tmp_path / "s")
    engine = create_engine(sqlite_url)
    with Session(engine) as session:
        record = session.scalars(select(Snapshot)).one()
    engine.dispose()
    assert record.snapshot_id == manifest["snapshot_id"]
    assert record.spec == manifest["spec"] and record.counts["counts"] == manifest["counts"]
    assert record.layout == "end-to-end" and record.format == "parquet" and record.rows == 8
    assert record.created_at is not None
    human = sqlite_kpdd("snapshots")
    assert human.code == 0 and "snapshots" in human.out
