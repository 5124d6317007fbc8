"""Judge chain outcomes against gold answers with the project's judges, and name the failure.

CoT: the parsed solution, written back in the answer format (`format_solution`: the steps, then
`The answer is: ...`), goes to `services.validation.matching.judge_cot`. PoT: every parsed
program of the batch runs in the sandbox at once (`Sandbox.run_many`: generated code runs
nowhere else) and each result goes to `judge_execution`. The gold is the item's, as written.

Failure-kind policy (every prediction gets exactly one `kind`):

- `correct`: the judge's verdict is `match`.
- `wrong`: an answer was read and is not the gold: verdict `mismatch`, or `ambiguous` (two
  different boxed answers, "18 or 20": hedging is not an answer).
- `no_answer`: the chain broke (a stage's output did not parse: no answer line, no program
  assigning `ans`, a missing section; the stage and the parser's message are recorded), or the
  judge found no answer (`no_answer`, `too_long`), or the program ran but set no `ans` (or None).
- `program_error`: the program did not finish normally: an exception (`error`), `memory`,
  `signal` (a crash, a file over its size limit), `output_cap`, a program too large to send. The
  sandbox's own kind stays in `execution.kind` and `verdict.details.execution`.
- `timeout`: the program hit its wall-clock or CPU deadline.

`FAILURE_KINDS` lists the four non-correct kinds, in report order. Any other verdict kind (only
`no_gold` or `no_consensus`, impossible here since items must carry a gold) counts as `wrong`.
A sandbox that fails (not a program: the fork-server itself) is restarted once; failing again
raises `EvalRunError`, since scoring programs that never ran would be wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.kpdd.formatting import format_solution
from services.validation.matching import judge_cot, judge_execution
from services.validation.sandbox import ExecutionResult, Sandbox, SandboxError
from services.validation.verdict import Verdict
from training.evaluate.chain import ChainOutcome
from training.evaluate.errors import EvalRunError
from training.evaluate.items import EvalItem

log = logging.getLogger(__name__)

FAILURE_KINDS = ("wrong", "no_answer", "program_error", "timeout")
PREDICTION_KINDS = ("correct", *FAILURE_KINDS)
_VERDICT_TO_KIND = {
    "match": "correct",
    "mismatch": "wrong",
    "ambiguous": "wrong",
    "no_answer": "no_answer",
    "too_long": "no_answer",
    "timeout": "timeout",
    "error": "program_error",
    "memory": "program_error",
    "signal": "program_error",
    "output_cap": "program_error",
}


@dataclass(slots=True)
class Judgement:
    """The verdict on one item: its `kind` (see the policy table) and what it rests on."""

    kind: str
    reason: str | None = None
    verdict: Verdict | None = None
    execution: ExecutionResult | None = None
    failed_stage: str | None = None  # the stage whose output did not parse


def kind_of(verdict: Verdict) -> str:
    """The prediction kind for a judge's verdict (see the policy table)."""
    return _VERDICT_TO_KIND.get(verdict.kind, "wrong")


def judge_outcomes(
    items: Sequence[EvalItem],
    outcomes: Sequence[ChainOutcome],
    mode: str,
    sandbox: Sandbox | None,
    *,
    program_timeout_s: float | None = None,
) -> list[Judgement]:
    """One `Judgement` per item, in order. `sandbox` (already started or not) is needed when
    some outcome holds a program; it is used, never closed, here."""
    judgements: list[Judgement | None] = [None] * len(items)
    programs: list[tuple[int, str]] = []
    for index, (item, outcome) in enumerate(zip(items, outcomes, strict=True)):
        if outcome.failure is not None:
            failure = outcome.failure
            reason = f"{failure.task} output did not parse ({failure.kind}): {failure.message}"
            judgements[index] = Judgement("no_answer", reason, failed_stage=failure.task)
        elif outcome.solution is None:
            raise ValueError(f"item {item.dataset}/{item.item_id}: chain ended without a solution")
        elif mode == "pot":
            if outcome.solution.program is None:
                judgements[index] = Judgement("no_answer", "the solution has no program")
            else:
                programs.append((index, outcome.solution.program))
        else:
            judgements[index] = _judged(judge_cot(format_solution(outcome.solution), item.gold))
    if programs:
        if sandbox is None:
            raise ValueError("PoT outcomes need a sandbox to run their programs")
        results = run_programs(sandbox, [program for _, program in programs], program_timeout_s)
        for (index, _), result in zip(programs, results, strict=True):
            judgement = _judged(judge_execution(result, items[index].gold))
            judgement.execution = result
            judgements[index] = judgement
    return [j for j in judgements if j is not None]


def run_programs(sandbox: Sandbox, programs: list[str], timeout_s: float | None) -> list[ExecutionResult]:
    """Every program's result, in order; the sandbox is retried once if it (not a program) fails."""
    for attempt in (1, 2):
        try:
            return list(sandbox.run_many(programs, timeout_s=timeout_s))
        except SandboxError as exc:
            log.warning("the program sandbox failed (attempt %d): %s", attempt, exc)
            if attempt == 2:
                raise EvalRunError(
                    f"the program sandbox failed twice ({exc}); PoT programs cannot be scored "
                    "without it (see docs/sandbox.md)"
                ) from None
    raise AssertionError("unreachable")


def _judged(verdict: Verdict) -> Judgement:
    kind = kind_of(verdict)
    reason = verdict.details.get("reason")
    return Judgement(kind, str(reason) if reason is not None else None, verdict)


def judgement_json(judgement: Judgement) -> dict[str, Any]:
    return {
        "kind": judgement.kind,
        "reason": judgement.reason,
        "failed_stage": judgement.failed_stage,
        "verdict": judgement.verdict.to_json() if judgement.verdict is not None else None,
        "execution": judgement.execution.as_dict() if judgement.execution is not None else None,
    }
