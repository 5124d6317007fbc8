"""Typed records of the KPDD prompt/parse cycle.

A key-point rationale has three stages: the core question, the problem-solving information (a
list of facts and quantities), and the solution. The solution is either Chain-of-Thought text
ending in a marked final answer (mode `cot`) or a Python program storing the answer in `ans`
(mode `pot`). A teacher answer that cannot be used is a `ParseFailure`, which is data: it is
stored with the call, counted by kind, and never raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Mode = Literal["cot", "pot"]
StageMode = Literal["single", "staged"]
# `all` is the one stage of the single mode; the three others are the staged chain, in order.
Stage = Literal["all", "core_question", "solving_info", "solution"]
FinishReason = Literal["stop", "length", "refusal", "other"]
FailureKind = Literal["malformed", "truncated", "refused", "empty"]

MODES: tuple[Mode, ...] = get_args(Mode)
STAGE_MODES: tuple[StageMode, ...] = get_args(StageMode)
STAGED_STAGES: tuple[Stage, ...] = ("core_question", "solving_info", "solution")
FINISH_REASONS: tuple[FinishReason, ...] = get_args(FinishReason)
FAILURE_KINDS: tuple[FailureKind, ...] = get_args(FailureKind)


def stages_of(stage_mode: StageMode) -> tuple[Stage, ...]:
    """The stages a stage mode runs, in call order."""
    return ("all",) if stage_mode == "single" else STAGED_STAGES


@dataclass(slots=True)
class KeyPoints:
    """A parsed key-point rationale.

    For mode `cot`, `solution_text` holds the steps (without the answer line) and
    `final_answer_text` the text after the answer marker, as written (`"$1,200."` stays so;
    answer normalisation is the validator's job); `program` is None. For mode `pot`, `program`
    holds the code (not yet executed, never trusted) and the two CoT fields are None.
    """

    core_question: str
    solving_info: list[str]
    solution_text: str | None = None
    final_answer_text: str | None = None
    program: str | None = None

    @property
    def mode(self) -> Mode:
        return "pot" if self.program is not None else "cot"


@dataclass(slots=True)
class Solution:
    """The output of the staged `solution` stage: CoT text and answer, or a program."""

    solution_text: str | None = None
    final_answer_text: str | None = None
    program: str | None = None


@dataclass(slots=True)
class ParseFailure:
    """Why a teacher answer is unusable. `kind` says what to do next: `truncated` may succeed
    with a larger token budget, `refused` and `malformed` are bad items, `empty` is either."""

    kind: FailureKind
    message: str


# What `parse_stage` returns for each stage: the core question text, the list of facts, or a
# Solution; `parse_response` (single mode) returns KeyPoints.
StageOutput = str | list[str] | Solution


__all__ = [
    "FAILURE_KINDS",
    "FINISH_REASONS",
    "MODES",
    "STAGED_STAGES",
    "STAGE_MODES",
    "FailureKind",
    "FinishReason",
    "KeyPoints",
    "Mode",
    "ParseFailure",
    "Solution",
    "Stage",
    "StageMode",
    "StageOutput",
    "stages_of",
]
