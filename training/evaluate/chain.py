"""Run a layout's stages over items: build each stage's inputs, generate, parse, feed forward.

Layouts and their tasks come from `services.kpdd.formatting.LAYOUT_TASKS` (inference order);
inputs from `format_student_input`, outputs are read with the teachers' parser
(`services.kpdd.parsing`), finish reason `stop`:

- `end-to-end`: one output, `parse_response` (core question, information and solution).
- `two-stage`: `key-points` (core question and information; each read with `parse_stage`),
  then `solution` given both.
- `cascade`: `core-question`, then `solving-info` given the core question, then `solution`
  given both.

Each stage is one call of the `GenerateFn` with the inputs of every item still in the chain.
An item whose output does not parse leaves the chain at that stage: its `ChainOutcome` says
which stage and why (`failure`), and later stages are never asked for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.kpdd.formatting import LAYOUT_TASKS, format_student_input
from services.kpdd.parsing import parse_response, parse_stage
from services.kpdd.records import KeyPoints, Mode, ParseFailure, Solution
from training.evaluate.generation import GenerateFn, Generation, as_generation
from training.evaluate.items import EvalItem

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StageRecord:
    """One stage of one item: what the student was given, what it wrote, what was read from it."""

    task: str
    input: str
    output: Generation
    parsed: Any = None  # JSON-ready: the core question, the list of facts, or the solution
    error: str | None = None  # why the output did not parse (`kind: message`)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "input": self.input,
            "output": self.output.text,
            "stopped": self.output.stopped,
            "new_tokens": self.output.new_tokens,
            "input_tokens": self.output.input_tokens,
            "parsed": self.parsed,
            "error": self.error,
        }


@dataclass(slots=True)
class ChainFailure:
    """The stage whose output did not parse, the parser's kind and its message."""

    task: str
    kind: str
    message: str


@dataclass(slots=True)
class ChainOutcome:
    """An item's way through its layout: the stages run, what was read, or where it broke."""

    stages: list[StageRecord] = field(default_factory=list)
    core_question: str | None = None
    solving_info: list[str] | None = None
    solution: Solution | None = None
    failure: ChainFailure | None = None


def run_chain(items: Sequence[EvalItem], layout: str, mode: str, generate: GenerateFn) -> list[ChainOutcome]:
    """Each item's outcome, in item order. `generate` is called once per stage (skipped when no
    item is left); it must return one output per input."""
    if layout not in LAYOUT_TASKS:
        raise ValueError(f"unknown layout {layout!r}")
    outcomes = [ChainOutcome() for _ in items]
    for task in LAYOUT_TASKS[layout]:
        alive = [i for i, outcome in enumerate(outcomes) if outcome.failure is None]
        if not alive:
            break
        inputs = [
            format_student_input(
                task, mode, items[i].question, outcomes[i].core_question, outcomes[i].solving_info
            )
            for i in alive
        ]
        log.info("stage %s: generating %d output(s)", task, len(inputs))
        outputs = list(generate(inputs))
        if len(outputs) != len(inputs):
            raise RuntimeError(f"generate returned {len(outputs)} outputs for {len(inputs)} inputs")
        for i, text_input, output in zip(alive, inputs, outputs, strict=True):
            record = StageRecord(task, text_input, as_generation(output))
            outcomes[i].stages.append(record)
            _read_stage(outcomes[i], record, mode)
    return outcomes


def _read_stage(outcome: ChainOutcome, record: StageRecord, mode: str) -> None:
    """Parse `record`'s output for its task into `outcome`, or mark the chain broken there."""
    text, task = record.output.text, record.task
    mode_: Mode = "pot" if mode == "pot" else "cot"
    if task == "end-to-end":
        parsed = parse_response(text, "stop", mode_)
        if isinstance(parsed, KeyPoints):
            outcome.core_question, outcome.solving_info = parsed.core_question, parsed.solving_info
            outcome.solution = Solution(parsed.solution_text, parsed.final_answer_text, parsed.program)
            record.parsed = {
                "core_question": parsed.core_question,
                "solving_info": parsed.solving_info,
                **_solution_json(outcome.solution),
            }
            return
        _fail(outcome, record, parsed)
        return
    if task in ("key-points", "core-question"):
        core = parse_stage(text, "stop", mode_, "core_question")
        if isinstance(core, ParseFailure):
            _fail(outcome, record, core, "core question: " if task == "key-points" else "")
            return
        outcome.core_question = str(core)
    if task in ("key-points", "solving-info"):
        info = parse_stage(text, "stop", mode_, "solving_info")
        if isinstance(info, ParseFailure):
            _fail(outcome, record, info, "information: " if task == "key-points" else "")
            return
        outcome.solving_info = [str(fact) for fact in info]
    if task == "solution":
        solution = parse_stage(text, "stop", mode_, "solution")
        if isinstance(solution, ParseFailure):
            _fail(outcome, record, solution)
            return
        assert isinstance(solution, Solution)
        outcome.solution = solution
        record.parsed = _solution_json(solution)
        return
    record.parsed = {
        "key-points": {"core_question": outcome.core_question, "solving_info": outcome.solving_info},
        "core-question": outcome.core_question,
        "solving-info": outcome.solving_info,
    }[task]


def _fail(outcome: ChainOutcome, record: StageRecord, failure: ParseFailure, prefix: str = "") -> None:
    record.error = f"{failure.kind}: {prefix}{failure.message}"
    outcome.failure = ChainFailure(record.task, failure.kind, prefix + failure.message)


def _solution_json(solution: Solution) -> dict[str, Any]:
    if solution.program is not None:
        return {"program": solution.program}
    return {"solution_text": solution.solution_text, "final_answer_text": solution.final_answer_text}
