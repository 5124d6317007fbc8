"""Student task rows: the inputs and targets a student trains on, in the KPDD answer format.

They use `services.kpdd.formatting`, the one definition of the format the teachers were asked
for, so a student's output parses with the same parser as a teacher's.

- `end-to-end`: input `Problem:\\n<question>`; target the complete answer (core question,
  information, solution).
- `cascade`: `core_question` (input: the problem; target: `Core question: ...`),
  `solving_info` (input: the problem and the core question; target the information list) and
  `solution` (input: the problem, core question and information; target the `Solution:`
  section): the same inputs the staged teacher prompts send.

Task rows are built for a batch of whole problems at a time, from its columns
(`KeyPointColumns`); each keeps the position of its rationale in the batch, from which the
export takes the `rationale_id`, `problem_id`, `teacher`, `mode` and `split` columns.

A rationale contributes a task row only when the key points that row needs are present (with
`--verdict all`, an unparsed rationale has none). In `cascade`, `core_question` and
`solving_info` rows that repeat an earlier row of the same problem and mode exactly (same input
and target) are left out: several samples usually agree on the first two stages, and repeating
them would only weight those problems more. The `solution` task keeps one row per rationale.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, count, repeat

from services.kpdd.formatting import (
    format_core_question,
    format_problem,
    format_solution,
    format_solving_info,
)
from services.kpdd.records import Solution

CASCADE_TABLES = ("core_question", "solving_info", "solution")


@dataclass(slots=True)
class KeyPointColumns:
    """What the task rows of one batch of whole problems are made of, as Python lists: per
    problem its question (problem `i` is rows `starts[i]` to `starts[i + 1]`), per row the key
    points, the mode and the final answer text."""

    starts: list[int]
    question: list[str]
    core_question: list[str | None]
    solving_info: list[list[str] | None]
    solution: list[str | None]
    final_answer_text: list[str | None]
    mode: list[str]


@dataclass(slots=True)
class TaskColumns:
    """Task rows: the row of the batch each comes from (its rationale), its input and target."""

    positions: list[int] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)


def _solution(mode: str, solution: str | None, final_answer_text: str | None) -> Solution:
    # Positional: (solution_text, final_answer_text, program). Keywords cost a third more, per row.
    if mode == "pot":
        return Solution(None, None, solution)
    return Solution(solution, final_answer_text)


def _per_row(kp: KeyPointColumns, per_problem: list[str]) -> Iterator[str]:
    """Each problem's value repeated for each of its rows."""
    lengths = [end - start for start, end in zip(kp.starts, kp.starts[1:], strict=False)]
    return chain.from_iterable(map(repeat, per_problem, lengths))


def end_to_end_tasks(kp: KeyPointColumns) -> TaskColumns:
    """One `end_to_end` row per rationale with complete key points."""
    out = TaskColumns()
    positions, inputs, targets = out.positions, out.inputs, out.targets
    rows = zip(
        count(),
        kp.core_question,
        kp.solving_info,
        kp.solution,
        kp.mode,
        kp.final_answer_text,
        _per_row(kp, [format_problem(question) for question in kp.question]),
        strict=False,  # count() is endless
    )
    # Samples of one problem often share the first two stages: format them once.
    last_core: str | None = None
    last_info: list[str] | None = None
    head = ""
    for i, core_question, solving_info, solution, mode, answer, problem_input in rows:
        if not (core_question and solving_info is not None and solution):
            continue
        if core_question != last_core or solving_info != last_info:
            last_core, last_info = core_question, solving_info
            head = format_core_question(core_question) + "\n\n" + format_solving_info(solving_info)
        # format_key_points' layout, without building a KeyPoints per row.
        positions.append(i)
        inputs.append(problem_input)
        targets.append(head + "\n\n" + format_solution(_solution(mode, solution, answer)))
    return out


def cascade_tasks(kp: KeyPointColumns) -> dict[str, TaskColumns]:
    """The `core_question`, `solving_info` and `solution` rows."""
    out = {table: TaskColumns() for table in CASCADE_TABLES}
    core_rows, info_rows, solution_rows = (out[table] for table in CASCADE_TABLES)
    for problem, question in enumerate(kp.question):
        seen: set[tuple[str, str, str, str]] = set()
        problem_input: str | None = None
        for i in range(kp.starts[problem], kp.starts[problem + 1]):
            core_question = kp.core_question[i]
            if not core_question:
                continue
            if problem_input is None:
                problem_input = format_problem(question)
            mode = kp.mode[i]
            target = format_core_question(core_question)
            key = ("core_question", mode, problem_input, target)
            if key not in seen:
                seen.add(key)
                _add(core_rows, i, problem_input, target)
            solving_info = kp.solving_info[i]
            if solving_info is None:
                continue
            info_input = format_problem(question, core_question)
            target = format_solving_info(solving_info)
            key = ("solving_info", mode, info_input, target)
            if key not in seen:
                seen.add(key)
                _add(info_rows, i, info_input, target)
            solution = kp.solution[i]
            if not solution:
                continue
            solution_input = format_problem(question, core_question, solving_info)
            target = format_solution(_solution(mode, solution, kp.final_answer_text[i]))
            _add(solution_rows, i, solution_input, target)
    return out


def _add(rows: TaskColumns, position: int, input_text: str, target: str) -> None:
    rows.positions.append(position)
    rows.inputs.append(input_text)
    rows.targets.append(target)


__all__ = ["CASCADE_TABLES", "KeyPointColumns", "TaskColumns", "cascade_tasks", "end_to_end_tasks"]
