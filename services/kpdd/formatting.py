"""The text layout the KPDD prompts ask for, written out from records.

This is the one definition of the answer format: the few-shot demonstrations are rendered with
it, the teacher simulator answers with it, and `parsing` reads it back (more forgivingly: models
add markdown, number their lists, or drop the code fence). Changing anything here changes the
rendered demonstrations and therefore every prompt version.

A single-mode answer reads::

    Core question: How many clips did Natalia sell altogether in April and May?

    Problem-solving information:
    - Natalia sold clips to 48 of her friends in April.
    - In May she sold half as many clips as in April.

    Solution:
    In May she sold 48 / 2 = 24 clips.
    Altogether she sold 48 + 24 = 72 clips.
    The answer is: 72

and in PoT mode the solution section is one ```python fenced program that stores the answer in
`ans`. Each staged answer is the matching section alone, heading included.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.kpdd.records import KeyPoints, Solution

PROBLEM_MARKER = "Problem:"
CORE_HEADING = "Core question:"
INFO_HEADING = "Problem-solving information:"
SOLUTION_HEADING = "Solution:"
ANSWER_MARKER = "The answer is:"


def format_core_question(core_question: str) -> str:
    return f"{CORE_HEADING} {core_question.strip()}"


def format_solving_info(items: Sequence[str]) -> str:
    lines = [INFO_HEADING, *(f"- {item.strip()}" for item in items)]
    return "\n".join(lines)


def format_solution(solution: Solution) -> str:
    """The `Solution:` section: steps then the answer line (CoT), or one fenced program (PoT)."""
    if solution.program is not None:
        return f"{SOLUTION_HEADING}\n```python\n{solution.program.strip()}\n```"
    steps = (solution.solution_text or "").strip()
    answer_line = f"{ANSWER_MARKER} {(solution.final_answer_text or '').strip()}"
    return f"{SOLUTION_HEADING}\n{steps}\n{answer_line}" if steps else f"{SOLUTION_HEADING}\n{answer_line}"


def solution_of(key_points: KeyPoints) -> Solution:
    return Solution(key_points.solution_text, key_points.final_answer_text, key_points.program)


def format_key_points(key_points: KeyPoints) -> str:
    """A complete single-mode answer."""
    return "\n\n".join(
        [
            format_core_question(key_points.core_question),
            format_solving_info(key_points.solving_info),
            format_solution(solution_of(key_points)),
        ]
    )


def format_problem(
    question: str, core_question: str | None = None, solving_info: Sequence[str] | None = None
) -> str:
    """The user message: the problem after its marker, then the earlier stages' outputs (staged)."""
    parts = [f"{PROBLEM_MARKER}\n{question.strip()}"]
    if core_question is not None:
        parts.append(format_core_question(core_question))
    if solving_info is not None:
        parts.append(format_solving_info(solving_info))
    return "\n\n".join(parts)


# --- Student tasks -------------------------------------------------------------------------------
#
# A student's input always says which task it is asked and which kind of solution is wanted, on
# a first header line, e.g. `[end-to-end | KPDD-PoT]`: a snapshot holding CoT and PoT rationales
# of one problem would otherwise give the student identical inputs with two kinds of targets.
# The body after the header is the teacher prompt's user message (`format_problem`), and the
# target is the matching part of the KPDD answer format, so a student's output parses with the
# teachers' parser (`services.kpdd.parsing`).

STUDENT_TASKS = ("end-to-end", "key-points", "core-question", "solving-info", "solution")
# Layout -> its tasks, in inference order (each task's output is part of the next one's input).
LAYOUT_TASKS: dict[str, tuple[str, ...]] = {
    "end-to-end": ("end-to-end",),
    "two-stage": ("key-points", "solution"),
    "cascade": ("core-question", "solving-info", "solution"),
}
MODE_LABELS = {"cot": "KPDD-CoT", "pot": "KPDD-PoT"}
# The version of this input format, recorded in snapshot manifests: 1 had no header line.
STUDENT_INPUT_VERSION = 2
# The header's shape, as snapshot manifests and cards describe it.
STUDENT_HEADER_PATTERN = f"[TASK | {'|'.join(MODE_LABELS.values())}]"


def task_table(task: str) -> str:
    """The snapshot table holding a task's rows (`key-points` -> `key_points`)."""
    return task.replace("-", "_")


def student_header(task: str, mode: str) -> str:
    """The first line of every student input: `[TASK | KPDD-CoT]` or `[TASK | KPDD-PoT]`."""
    if task not in STUDENT_TASKS:
        raise ValueError(f"unknown student task {task!r}; expected one of {', '.join(STUDENT_TASKS)}")
    if mode not in MODE_LABELS:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODE_LABELS)}")
    return f"[{task} | {MODE_LABELS[mode]}]"


def student_input_prefix(task: str, mode: str) -> str:
    """What every input of a task and mode starts with: the header line and its line break.
    Callers building many inputs take it once per (task, mode) and append `format_problem`."""
    return student_header(task, mode) + "\n"


def format_student_input(
    task: str,
    mode: str,
    question: str,
    core_question: str | None = None,
    solving_info: Sequence[str] | None = None,
) -> str:
    """A student task's input: the header line, then the problem and the earlier stages' outputs."""
    return student_input_prefix(task, mode) + format_problem(question, core_question, solving_info)


def format_key_points_target(core_question: str, solving_info: Sequence[str]) -> str:
    """The `key-points` target (two-stage extractor): the core question and the information, as
    they open a complete answer (`format_key_points`)."""
    return format_core_question(core_question) + "\n\n" + format_solving_info(solving_info)
