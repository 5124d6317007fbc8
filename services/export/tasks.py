"""Student task rows: the inputs and targets a student trains on, in the KPDD answer format.

They use `services.kpdd.formatting`, the one definition of the format the teachers were asked
for (so a student's output parses with the same parser as a teacher's) and of the student
tasks: every input starts with the header line `[TASK | KPDD-CoT]` or `[TASK | KPDD-PoT]`
(`formatting.student_header`), then the problem and the earlier stages' outputs as the staged
teacher prompts send them (`formatting.format_problem`). Each layout's tasks are
`formatting.LAYOUT_TASKS`; each task's table is `formatting.task_table` (`-` -> `_`):

- `end-to-end` (table `end_to_end`): input the header and the problem; target the complete
  answer (core question, information, solution).
- `two-stage`: `key_points` (input: the header and the problem; target the core question and
  the information) and `solution` (input: the header, the problem, the core question and the
  information; target the `Solution:` section).
- `cascade`: `core_question` (input: the header and the problem; target `Core question: ...`),
  `solving_info` (input: the header, the problem and the core question; target the information
  list) and `solution` (as in `two-stage`).

Task rows are built for a batch of whole problems at a time, from its columns
(`KeyPointColumns`); each keeps the position of its rationale in the batch, from which the
export takes the `rationale_id`, `problem_id`, `teacher`, `mode` and `split` columns.

A rationale contributes a task row only when the key points that row needs are present (with
`--verdict all`, an unparsed rationale has none). The rows of the tasks before `solution`
(`key_points`; `core_question` and `solving_info`) that repeat an earlier row of the same
problem and mode exactly (same input and target) are left out: several samples usually agree
on the key points, and repeating them would only weight those problems more. The `end_to_end`
and `solution` tasks keep one row per rationale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, count, repeat

from services.kpdd.formatting import (
    MODE_LABELS,
    format_core_question,
    format_key_points_target,
    format_problem,
    format_solution,
    format_solving_info,
    student_input_prefix,
)
from services.kpdd.records import Solution


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


def _prefixes(task: str) -> dict[str, str]:
    """mode -> the header line (and its line break) every input of `task` in that mode starts
    with: formatted once per batch, not once per row."""
    return {mode: student_input_prefix(task, mode) for mode in MODE_LABELS}


def _solution(mode: str, solution: str | None, final_answer_text: str | None) -> Solution:
    # Positional: (solution_text, final_answer_text, program). Keywords cost a third more, per row.
    if mode == "pot":
        return Solution(None, None, solution)
    return Solution(solution, final_answer_text)


def _per_row(kp: KeyPointColumns, per_problem: list[str]) -> Iterator[str]:
    """Each problem's value repeated for each of its rows."""
    lengths = [end - start for start, end in zip(kp.starts, kp.starts[1:], strict=False)]
    return chain.from_iterable(map(repeat, per_problem, lengths))


def end_to_end_tasks(kp: KeyPointColumns) -> dict[str, TaskColumns]:
    """One `end_to_end` row per rationale with complete key points."""
    out = TaskColumns()
    positions, inputs, targets = out.positions, out.inputs, out.targets
    prefix = _prefixes("end-to-end")
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
    # Samples of one problem often share the first two stages, and rows come by problem, then
    # mode: build the key points and the input once for a run of rows, not once per row.
    last_core: str | None = None
    last_info: list[str] | None = None
    last_body: str | None = None
    last_mode = ""
    head = problem_input = ""
    for i, core_question, solving_info, solution, mode, answer, body in rows:
        if not (core_question and solving_info is not None and solution):
            continue
        if core_question != last_core or solving_info != last_info:
            last_core, last_info = core_question, solving_info
            head = format_key_points_target(core_question, solving_info)
        if body is not last_body or mode != last_mode:  # one body object per problem (`_per_row`)
            last_body, last_mode = body, mode
            problem_input = prefix[mode] + body
        # format_key_points' layout, without building a KeyPoints per row.
        positions.append(i)
        inputs.append(problem_input)
        targets.append(head + "\n\n" + format_solution(_solution(mode, solution, answer)))
    return {"end_to_end": out}


def two_stage_tasks(kp: KeyPointColumns) -> dict[str, TaskColumns]:
    """The `key_points` and `solution` rows."""
    key_point_rows, solution_rows = TaskColumns(), TaskColumns()
    key_points_prefix = _prefixes("key-points")
    solution_prefix = _prefixes("solution")
    for problem, question in enumerate(kp.question):
        seen: set[tuple[str, str]] = set()
        body: str | None = None
        for i in range(kp.starts[problem], kp.starts[problem + 1]):
            core_question = kp.core_question[i]
            solving_info = kp.solving_info[i]
            if not core_question or solving_info is None:
                continue
            if body is None:
                body = format_problem(question)
            key_points_input = key_points_prefix[kp.mode[i]] + body
            target = format_key_points_target(core_question, solving_info)
            if (key_points_input, target) not in seen:  # the input names the mode
                seen.add((key_points_input, target))
                _add(key_point_rows, i, key_points_input, target)
            _add_solution(solution_rows, solution_prefix, kp, i, question, core_question, solving_info)
    return {"key_points": key_point_rows, "solution": solution_rows}


def cascade_tasks(kp: KeyPointColumns) -> dict[str, TaskColumns]:
    """The `core_question`, `solving_info` and `solution` rows."""
    core_rows, info_rows, solution_rows = TaskColumns(), TaskColumns(), TaskColumns()
    core_prefix = _prefixes("core-question")
    info_prefix = _prefixes("solving-info")
    solution_prefix = _prefixes("solution")
    for problem, question in enumerate(kp.question):
        seen: set[tuple[str, str]] = set()
        body: str | None = None
        for i in range(kp.starts[problem], kp.starts[problem + 1]):
            core_question = kp.core_question[i]
            if not core_question:
                continue
            if body is None:
                body = format_problem(question)
            mode = kp.mode[i]
            # Inputs name their task and mode: equal inputs are of one task and one mode.
            core_input = core_prefix[mode] + body
            target = format_core_question(core_question)
            if (core_input, target) not in seen:
                seen.add((core_input, target))
                _add(core_rows, i, core_input, target)
            solving_info = kp.solving_info[i]
            if solving_info is None:
                continue
            info_input = info_prefix[mode] + format_problem(question, core_question)
            target = format_solving_info(solving_info)
            if (info_input, target) not in seen:
                seen.add((info_input, target))
                _add(info_rows, i, info_input, target)
            _add_solution(solution_rows, solution_prefix, kp, i, question, core_question, solving_info)
    return {"core_question": core_rows, "solving_info": info_rows, "solution": solution_rows}


def _add_solution(
    rows: TaskColumns,
    prefix: dict[str, str],
    kp: KeyPointColumns,
    i: int,
    question: str,
    core_question: str,
    solving_info: list[str],
) -> None:
    """The `solution` row of rationale `i` (given its key points), if it has a solution."""
    solution = kp.solution[i]
    if not solution:
        return
    mode = kp.mode[i]
    solution_input = prefix[mode] + format_problem(question, core_question, solving_info)
    _add(rows, i, solution_input, format_solution(_solution(mode, solution, kp.final_answer_text[i])))


def _add(rows: TaskColumns, position: int, input_text: str, target: str) -> None:
    rows.positions.append(position)
    rows.inputs.append(input_text)
    rows.targets.append(target)


# Layout -> the function building its task rows, by table: `formatting.task_table` of each of
# `formatting.LAYOUT_TASKS[layout]`, in that order (a test checks they agree).
LAYOUT_BUILDERS: dict[str, Callable[[KeyPointColumns], dict[str, TaskColumns]]] = {
    "end-to-end": end_to_end_tasks,
    "two-stage": two_stage_tasks,
    "cascade": cascade_tasks,
}


def build_tasks(layout: str, kp: KeyPointColumns) -> dict[str, TaskColumns]:
    """The task rows of a layout for one batch, by table."""
    return LAYOUT_BUILDERS[layout](kp)


__all__ = [
    "LAYOUT_BUILDERS",
    "KeyPointColumns",
    "TaskColumns",
    "build_tasks",
    "cascade_tasks",
    "end_to_end_tasks",
    "two_stage_tasks",
]
