"""The text the simulator answers with, for one prompt stage, with or without a content fault.

Content faults change the text (and the finish reason) but not the HTTP exchange:

- `wrong`: the final answer is off (gold + 1, or "0" for a text gold). Only the solution (single
  mode, or staged stage `solution`) changes; a wrong core question or fact list is not simulated.
- `malformed`: the format is broken so that `services.kpdd.parsing` returns `malformed`: no
  section headings, no list, no answer line, or a program that never assigns `ans`.
- `truncate`: the text is cut at about 60% and the finish reason is `length`.
- `refusal`: a refusal text; the wire layer marks it the provider's way.

Anything else is the correct answer in the prompt's format (`services.kpdd.formatting`).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.kpdd.formatting import (
    format_core_question,
    format_key_points,
    format_solution,
    format_solving_info,
)
from services.kpdd.records import KeyPoints, Mode, Solution, Stage
from services.teachers.simulator.rationale import SimRationale

REFUSAL_TEXT = "I'm sorry, but I can't help with that request."
TRUNCATE_FRACTION = 0.6


@dataclass(slots=True, frozen=True)
class SimText:
    text: str
    finish: str  # "stop" | "length" | "refusal" (the wire layer maps it per provider)


def _solution(rationale: SimRationale, mode: Mode, wrong: bool) -> Solution:
    if mode == "pot":
        return Solution(program=rationale.wrong_program if wrong else rationale.program)
    return Solution(
        solution_text=rationale.cot_steps,
        final_answer_text=rationale.wrong_answer if wrong else rationale.answer,
    )


def correct_text(rationale: SimRationale, mode: Mode, stage: Stage, *, wrong: bool = False) -> str:
    """The well-formed answer to one stage (`wrong=True`: with a wrong final answer)."""
    if stage == "core_question":
        return format_core_question(rationale.core_question)
    if stage == "solving_info":
        return format_solving_info(rationale.solving_info)
    solution = _solution(rationale, mode, wrong)
    if stage == "solution":
        return format_solution(solution)
    return format_key_points(
        KeyPoints(
            rationale.core_question,
            list(rationale.solving_info),
            solution.solution_text,
            solution.final_answer_text,
            solution.program,
        )
    )


def malformed_text(rationale: SimRationale, mode: Mode, stage: Stage) -> str:
    """An answer that ignores the requested format in a way the parser must reject."""
    info_prose = " ".join(rationale.solving_info)
    if mode == "pot":
        body = rationale.program.replace("ans", "result")
        solution = f"Here is some code that should help:\n```python\n{body.strip()}\n```"
    else:
        solution = rationale.cot_steps
    if stage == "core_question":
        return f"Sure! Let me look at this problem.\n\n{rationale.core_question}\n\nI hope this helps."
    if stage == "solving_info":
        return f"The problem tells us several things. {info_prose}"
    if stage == "solution":
        return f"Let me work through it.\n\n{solution}"
    return f"Let me think about this problem. {rationale.core_question} {info_prose}\n\n{solution}"


def truncate(text: str, fraction: float = TRUNCATE_FRACTION) -> str:
    """The first `fraction` of `text`, cut at a space so it looks like a token boundary."""
    cut = max(1, int(len(text) * fraction))
    space = text.rfind(" ", 0, cut)
    return text[: space if space > 0 else cut]


def answer_text(rationale: SimRationale, mode: Mode, stage: Stage, fault: str | None) -> SimText:
    """The simulator's answer to one stage under an optional content fault."""
    if fault == "refusal":
        return SimText(REFUSAL_TEXT, "refusal")
    if fault == "malformed":
        return SimText(malformed_text(rationale, mode, stage), "stop")
    if fault == "truncate":
        return SimText(truncate(correct_text(rationale, mode, stage)), "length")
    return SimText(correct_text(rationale, mode, stage, wrong=fault == "wrong"), "stop")
