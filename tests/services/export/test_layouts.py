"""Layouts (end-to-end, two-stage, cascade), their student inputs (a header line naming the task
and the mode), formats (Parquet, JSON lines) and split integrity."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from services.export.spec import LAYOUTS
from services.export.tasks import LAYOUT_BUILDERS, KeyPointColumns
from services.export.writer import LAYOUT_TABLES, arrow_schema
from services.kpdd.formatting import (
    LAYOUT_TASKS,
    format_core_question,
    format_key_points_target,
    format_solution,
    format_solving_info,
    format_student_input,
    student_header,
    task_table,
)
from services.kpdd.parsing import parse_response
from services.kpdd.records import KeyPoints, Solution
from tests.conftest import CliResult
from tests.services.export.conftest import read_manifest, read_rows


def _solution_target(source: dict[str, Any]) -> str:
    expected = (
        Solution(program=source["solution"])
        if source["mode"] == "pot"
        else Solution(source["solution"], source["final_answer_text"])
    )
    return format_solution(expected)


def _check_solution_rows(out: Path, rationales: dict[int, dict[str, Any]]) -> None:
    """`solution` (two-stage and cascade): one row per rationale, given the key points."""
    solution_rows = read_rows(out, "solution")
    assert {t["rationale_id"] for t in solution_rows} == set(rationales)
    for task in solution_rows:
        source = rationales[task["rationale_id"]]
        assert task["input"] == format_student_input(
            "solution", source["mode"], source["question"], source["core_question"], source["solving_info"]
        )
        assert task["target"] == _solution_target(source)
        assert task["mode"] == source["mode"] and task["teacher"] == "sim:gold"


def test_the_layouts_tables_come_from_the_student_tasks() -> None:
    assert LAYOUTS == ("end-to-end", "two-stage", "cascade")
    assert LAYOUT_TABLES == {
        "end-to-end": ("rationales", "end_to_end"),
        "two-stage": ("rationales", "key_points", "solution"),
        "cascade": ("rationales", "core_question", "solving_info", "solution"),
    }
    empty = KeyPointColumns([0], [], [], [], [], [], [])
    for layout, build in LAYOUT_BUILDERS.items():  # each builder writes exactly its layout's tables
        assert (
            tuple(build(empty)) == tuple(map(task_table, LAYOUT_TASKS[layout])) == LAYOUT_TABLES[layout][1:]
        )
    assert student_header("key-points", "pot") == "[key-points | KPDD-PoT]"
    with pytest.raises(ValueError, match="unknown student task 'key_points'"):
        student_header("key_points", "cot")
    with pytest.raises(ValueError, match="unknown mode 'sql'; expected one of cot, pot"):
        student_header("solution", "sql")


def test_two_stage_rows_skip_missing_key_points_and_repeated_key_points() -> None:
    info = ["She sold 48 in April.", "May: half as many."]
    kp = KeyPointColumns(
        starts=[0, 6, 8],
        question=["  How many clips?  ", "Another?"],
        # Problem 0: two equal CoT samples, a CoT sample with other key points, an unparsed one
        # (no key points), a PoT sample whose key points equal the CoT ones, a PoT sample without
        # a solution. Problem 1: key points equal to problem 0's, and a core question alone.
        core_question=[
            "How many?",
            "How many?",
            "How many in all?",
            None,
            "How many?",
            "How many?",
            "How many?",
            "Q",
        ],
        solving_info=[info, info, info, None, info, info, info, None],
        solution=["48 + 24 = 72", "48 + 24 = 72", "72", None, "ans = 72", None, "steps", "x"],
        final_answer_text=["72", "72", "72", None, None, None, "1", "2"],
        mode=["cot", "cot", "cot", "cot", "pot", "pot", "cot", "cot"],
    )
    tasks = LAYOUT_BUILDERS["two-stage"](kp)
    key_points, solution = tasks["key_points"], tasks["solution"]
    assert key_points.positions == [0, 2, 4, 6]  # 1 repeats 0; 5 repeats 4 (same problem and mode)
    assert key_points.inputs == [
        "[key-points | KPDD-CoT]\nProblem:\nHow many clips?",
        "[key-points | KPDD-CoT]\nProblem:\nHow many clips?",
        "[key-points | KPDD-PoT]\nProblem:\nHow many clips?",
        "[key-points | KPDD-CoT]\nProblem:\nAnother?",
    ]
    assert key_points.targets[0] == "Core question: How many?\n\nProblem-solving information:\n" + (
        "- She sold 48 in April.\n- May: half as many."
    )
    assert key_points.targets[1].startswith("Core question: How many in all?\n\n")
    assert solution.positions == [0, 1, 2, 4, 6]  # one per rationale with a solution
    assert solution.inputs[3] == format_student_input("solution", "pot", "How many clips?", "How many?", info)
    assert solution.targets[3] == "Solution:\n```python\nans = 72\n```"
    assert solution.targets[0] == "Solution:\n48 + 24 = 72\nThe answer is: 72"
    # The cascade's solution task is the same task: the same rows.
    cascade = LAYOUT_BUILDERS["cascade"](kp)["solution"]
    assert (cascade.positions, cascade.inputs, cascade.targets) == (
        solution.positions,
        solution.inputs,
        solution.targets,
    )


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
        assert task["input"] == format_student_input("core-question", source["mode"], source["question"])
        assert task["target"] == format_core_question(source["core_question"])
    for task in read_rows(out, "solving_info"):
        source = rationales[task["rationale_id"]]
        assert task["input"] == format_student_input(
            "solving-info", source["mode"], source["question"], source["core_question"]
        )
        assert task["target"] == format_solving_info(source["solving_info"])
    _check_solution_rows(out, rationales)


def test_two_stage_layout_writes_key_points_then_solution(
    sqlite_kpdd: Callable[..., CliResult], make_rationales: Callable[..., None], tmp_path: Path
) -> None:
    make_rationales(sqlite_kpdd, 4, wrong=False)  # 4 problems x 2 modes x 2 identical samples
    out = tmp_path / "two-stage"
    assert sqlite_kpdd("export", "--out", out, "--layout", "two-stage").code == 0
    manifest = read_manifest(out)
    assert manifest["spec"]["layout"] == "two-stage"
    assert {f["path"]: f["rows"] for f in manifest["files"]} == {
        "data/rationales/train.parquet": 16,
        "data/key_points/train.parquet": 8,  # identical key points of a (problem, mode) appear once
        "data/solution/train.parquet": 16,  # one per rationale
        "README.md": None,
    }
    assert set(manifest["schema"]) == {"rationales", "key_points", "solution"}
    for table in ("key_points", "solution"):
        assert pq.read_schema(out / f"data/{table}/train.parquet").remove_metadata() == arrow_schema(table)

    rationales = {r["rationale_id"]: r for r in read_rows(out, "rationales")}
    key_points = read_rows(out, "key_points")
    solutions = {t["rationale_id"]: t for t in read_rows(out, "solution")}
    assert {(t["problem_id"], t["mode"]) for t in key_points} == {
        (r["problem_id"], r["mode"]) for r in rationales.values()
    }
    for task in key_points:
        source = rationales[task["rationale_id"]]
        assert task["input"] == format_student_input("key-points", source["mode"], source["question"])
        label = {"cot": "KPDD-CoT", "pot": "KPDD-PoT"}[source["mode"]]
        assert task["input"] == f"[key-points | {label}]\nProblem:\n{source['question'].strip()}"
        assert task["target"] == format_key_points_target(source["core_question"], source["solving_info"])
        # The extractor's output, then the solver's, parse back as one KPDD answer.
        answer = task["target"] + "\n\n" + solutions[task["rationale_id"]]["target"]
        parsed = parse_response(answer, "stop", source["mode"])
        assert isinstance(parsed, KeyPoints), parsed
        assert parsed.core_question == source["core_question"]
        assert parsed.solving_info == source["solving_info"]
    _check_solution_rows(out, rationales)

    card = (out / "README.md").read_text(encoding="utf-8")
    assert "## Student tasks" in card and "Layout `two-stage` has the task tables `key_points`, then" in card
    assert "`[key-points | KPDD-CoT]`" in card


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_input_starts_with_its_task_and_mode_and_no_input_serves_two_modes(
    layout: str,
    sqlite_kpdd: Callable[..., CliResult],
    make_rationales: Callable[..., None],
    tmp_path: Path,
) -> None:
    make_rationales(sqlite_kpdd, 3, wrong=False)  # CoT and PoT rationales of the same problems
    out = tmp_path / layout
    assert sqlite_kpdd("export", "--out", out, "--layout", layout).code == 0
    manifest = read_manifest(out)
    tasks = {task_table(task): task for task in LAYOUT_TASKS[layout]}
    assert manifest["student_inputs"] == {
        "format_version": 2,
        "header": "[TASK | KPDD-CoT|KPDD-PoT]",
        "tasks": tasks,
    }
    labels = {"cot": "KPDD-CoT", "pot": "KPDD-PoT"}
    for table, task in tasks.items():
        rows = read_rows(out, table)
        assert {row["mode"] for row in rows} == {"cot", "pot"}
        for row in rows:
            header, body = row["input"].split("\n", 1)
            assert header == f"[{task} | {labels[row['mode']]}]"
            assert body.startswith("Problem:\n")
        inputs = {mode: {row["input"] for row in rows if row["mode"] == mode} for mode in labels}
        assert inputs["cot"] and inputs["pot"] and not inputs["cot"] & inputs["pot"]
        description = {c["name"]: c["description"] for c in manifest["schema"][table]}["input"]
        assert f"`[{task} | KPDD-CoT]` or `[{task} | KPDD-PoT]`" in description
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "`[TASK | KPDD-CoT|KPDD-PoT]`" in card and "input format version 2" in card


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
        assert task["input"] == format_student_input("end-to-end", source["mode"], source["question"])
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
