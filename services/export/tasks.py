"""Student task rows: the inputs and targets a student trains on, in the KPDD answer format.

They use `services.kpdd.formatting`, the one definition of the format the teachers were asked
for, so a student's output parses with the same parser as a teacher's.

- `end-to-end`: input `Problem:\\n<question>`; target the complete answer (core question,
  information, solution).
- `cascade`: `core_question` (input: the problem; target: `Core question: ...`),
  `solving_info` (input: the problem and the core question; target the information list) and
  `solution` (input: the problem, core question and information; target the `Solution:`
  section): the same inputs the staged teacher prompts send.

A rationale contributes a task row only when the key points that row needs are present (with
`--verdict all`, an unparsed rationale has none). In `cascade`, `core_question` and
`solving_info` rows that repeat an earlier row of the same problem and mode exactly (same input
and target) are left out: several samples usually agree on the first two stages, and repeating
them would only weight those problems more. The `solution` task keeps one row per rationale.
"""

from __future__ import annotations

from typing import Any

from services.export.query import RationaleRow
from services.kpdd.formatting import (
    format_core_question,
    format_problem,
    format_solution,
    format_solving_info,
)
from services.kpdd.records import Solution

TaskRow = tuple[Any, ...]


def _solution(row: RationaleRow) -> Solution:
    if row.mode == "pot":
        return Solution(program=row.solution)
    return Solution(solution_text=row.solution, final_answer_text=row.final_answer_text)


def end_to_end_rows(group: list[RationaleRow], split: str) -> list[TaskRow]:
    """One `end_to_end` row per rationale of one problem with complete key points."""
    out: list[TaskRow] = []
    problem_input: str | None = None
    # Samples of one problem often share the first two stages: format them once.
    last_key: tuple[str | None, list[str] | None] = (None, None)
    head = ""
    for row in group:
        if not (row.core_question and row.solving_info is not None and row.solution):
            continue
        if problem_input is None:
            problem_input = format_problem(row.question)
        if (row.core_question, row.solving_info) != last_key:
            last_key = (row.core_question, row.solving_info)
            head = format_core_question(row.core_question) + "\n\n" + format_solving_info(row.solving_info)
        # format_key_points' layout, without building a KeyPoints per row.
        target = head + "\n\n" + format_solution(_solution(row))
        out.append((row.rationale_id, row.problem_id, row.teacher, row.mode, problem_input, target, split))
    return out


def cascade_rows(group: list[RationaleRow], split: str) -> dict[str, list[TaskRow]]:
    """The `core_question`, `solving_info` and `solution` rows of one problem."""
    out: dict[str, list[TaskRow]] = {"core_question": [], "solving_info": [], "solution": []}
    seen: set[tuple[str, str, str, str]] = set()
    problem_input: str | None = None
    for row in group:
        if not row.core_question:
            continue
        if problem_input is None:
            problem_input = format_problem(row.question)
        head = (row.rationale_id, row.problem_id, row.teacher, row.mode)
        target = format_core_question(row.core_question)
        key = ("core_question", row.mode, problem_input, target)
        if key not in seen:
            seen.add(key)
            out["core_question"].append((*head, problem_input, target, split))
        if row.solving_info is None:
            continue
        info_input = format_problem(row.question, row.core_question)
        target = format_solving_info(row.solving_info)
        key = ("solving_info", row.mode, info_input, target)
        if key not in seen:
            seen.add(key)
            out["solving_info"].append((*head, info_input, target, split))
        if not row.solution:
            continue
        solution_input = format_problem(row.question, row.core_question, row.solving_info)
        out["solution"].append((*head, solution_input, format_solution(_solution(row)), split))
    return out


__all__ = ["cascade_rows", "end_to_end_rows"]
