"""Layouts (end-to-end, cascade), formats (Parquet, JSON lines) and split integrity."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow.parquet as pq

from services.export.writer import arrow_schema
from services.kpdd.formatting import (
    format_core_question,
    format_problem,
    format_solution,
    format_solving_info,
)
from services.kpdd.parsing import parse_response
from services.kpdd.records import KeyPoints, Solution
from tests.conftest import CliResult
from tests.services.export.conftest import read_manifest, read_rows


def test_cascade_layout_writes_the_three_student_tasks_as_json_lines(
    sqlite_kpdd: Callable[..., CliResult], make_rationales: Callable[..., None], tmp_path: Path
) -> None:
    make_rationales(sqlite_kpdd, 4, wrong=False)  # 4 problems x 2 modes x 2 identical samples
    out = tmp_path / "cascade"
    assert sqlite_kpdd("export", "--out", out, "--layout", "cascade", "--format", "jsonl").code == 0
    manifest = read_manifest(out)
    paths = {f["path"]: f["rows"] for f in manifest["files"]}
    assert paths == {
        "data/rationales/train.jsonl": 16,
        "data/core_question/train.jsonl": 8,  # identical stage-1 rows of a (problem, mode) appear once
        "data/solving_info/train.jsonl": 8,
        "data/solution/train.jsonl": 16,  # one per rationale
        "README.md": None,
    }
    lines = (out / "data/rationales/train.jsonl").read_bytes().splitlines()
    assert all(list(orjson.loads(line)) == sorted(orjson.loads(line)) for line in lines)  # sorted keys

    rationales = {r["rationale_id"]: r for r in read_rows(out, "rationales")}
    for task in read_rows(out, "core_question"):
        source = rationales[task["rationale_id"]]
        assert task["input"] == format_problem(source["question"])
        assert task["target"] == format_core_question(source["core_question"])
    for task in read_rows(out, "solving_info"):
        source = rationales[task["rationale_id"]]
        assert task["input"] == format_problem(source["question"], source["core_question"])
        assert task["target"] == format_solving_info(source["solving_info"])
    solution_rows = read_rows(out, "solution")
    assert {t["rationale_id"] for t in solution_rows} == set(rationales)
    for task in solution_rows:
        source = rationales[task["rationale_id"]]
        assert task["input"] == format_problem(
            source["question"], source["core_question"], source["solving_info"]
        )
        expected = (
            Solution(program=source["solution"])
            if source["mode"] == "pot"
            else Solution(source["solution"], source["final_answer_text"])
        )
        assert task["target"] == format_solution(expected)
        assert task["mode"] == source["mode"] and task["teacher"] == "sim:gold"


def test_end_to_end_targets_parse_back_to_the_rationale(
    sqlite_kpdd: Callable[..., CliResult], make_rationales: Callable[..., None], tmp_path: Path
) -> None:
    make_rationales(sqlite_kpdd, 3, samples=1, wrong=False)
    out = tmp_path / "e2e"
    assert sqlite_kpdd("export", "--out", out).code == 0
    rationales = {r["rationale_id"]: r for r in read_rows(out, "rationales")}
    tasks = read_rows(out, "end_to_end")
    assert len(tasks) == len(rationales) == 6
    for task in tasks:
        source = rationales[task["rationale_id"]]
        parsed = parse_response(task["target"], "stop", source["mode"])
        assert isinstance(parsed, KeyPoints), parsed
        assert parsed.core_question == source["core_question"]
        assert parsed.solving_info == source["solving_info"]
        if source["mode"] == "pot":
            assert (parsed.program or "").strip() == source["solution"].strip()
        else:
            assert parsed.final_answer_text == source["final_answer_text"]
    for table in ("rationales", "end_to_end"):
        assert pq.read_schema(out / f"data/{table}/train.parquet").remove_metadata() == arrow_schema(table)


def test_splits_are_by_problem_and_by_question(
    sqlite_kpdd: Callable[..., CliResult], make_rationales: Callable[..., None], tmp_path: Path
) -> None:
    make_rationales(sqlite_kpdd, 10, name="g", wrong=False)
    make_rationales(sqlite_kpdd, 10, name="copy", samples=1, wrong=False)  # the same questions again
    out = tmp_path / "split"
    assert sqlite_kpdd("export", "--out", out, "--val-fraction", "0.4", "--layout", "cascade").code == 0
    manifest = read_manifest(out)
    assert manifest["spec"]["splits"]["names"] == ["train", "validation"]
    problems: dict[str, set[int]] = {}
    questions: dict[str, set[str]] = {}
    for split in ("train", "validation"):
        rows = read_rows(out, "rationales", split)
        assert rows and all(r["split"] == split for r in rows)
        problems[split] = {r["problem_id"] for r in rows}
        questions[split] = {r["question"] for r in rows}
        assert manifest["counts"]["by_split"][split] == {"rows": len(rows), "problems": len(problems[split])}
        for table in ("core_question", "solving_info", "solution"):
            assert {t["problem_id"] for t in read_rows(out, table, split)} <= problems[split]
    assert not problems["train"] & problems["validation"]  # no problem in two splits
    assert not questions["train"] & questions["validation"]  # nor a question, even in two corpora
    assert len(problems["train"] | problems["validation"]) == 20

    # Another seed moves problems between splits, still never splitting one.
    other = tmp_path / "other"
    assert sqlite_kpdd("export", "--out", other, "--val-fraction", "0.4", "--split-seed", "x").code == 0
    moved = {r["problem_id"] for r in read_rows(other, "rationales", "validation")}
    assert moved != problems["validation"]
    assert not moved & {r["problem_id"] for r in read_rows(other, "rationales", "train")}
