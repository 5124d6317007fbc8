"""Is a teacher's answer right? The probe's bridge to `services.validation`.

CoT: the parsed final answer is judged against the problem's gold with
`validation.matching.judge_answer_text`. PoT: the program runs in the validation sandbox (the
only place generated code ever runs) and its result is judged with `judge_execution`. When the
sandbox cannot start, the verdict says so (`checked: false` with the reason); the program is then
left unrun, never executed here.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from services.errors import RunFailure
from services.kpdd.records import KeyPoints
from services.validation.matching import judge_answer_text, judge_execution
from services.validation.sandbox import Sandbox
from services.validation.verdict import HIGH

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ProbeVerdict:
    """`match` is None when the answer could not be checked (`kind` then says why).
    `confidence` is the verdict's: `low` when the answer was read through the fallback."""

    checked: bool
    match: bool | None
    kind: str
    extracted: str | None = None
    reason: str | None = None
    details: dict[str, Any] | None = None
    confidence: str = HIGH

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "match": self.match,
            "kind": self.kind,
            "extracted": self.extracted,
            "reason": self.reason,
            "details": self.details or {},
            "confidence": self.confidence,
        }


def unchecked(reason: str, kind: str = "unchecked") -> ProbeVerdict:
    return ProbeVerdict(False, None, kind, reason=reason)


class AnswerJudge:
    """Judges key points against gold answers; owns the sandbox (started on first program).

    Use as a context manager so the sandbox process is stopped."""

    def __init__(self) -> None:
        self._sandbox: Sandbox | None = None
        self._sandbox_error: str | None = None
        self._stack = contextlib.ExitStack()

    def judge(self, key_points: KeyPoints, gold_answer: str | None) -> ProbeVerdict:
        if key_points.program is not None:
            sandbox = self._get_sandbox()
            if sandbox is None:
                return unchecked(f"the program was not run: {self._sandbox_error}")
            result = sandbox.run(key_points.program)
            verdict = judge_execution(result, gold_answer)
        else:
            verdict = judge_answer_text(key_points.final_answer_text or "", gold_answer, marker="answer_is")
        return ProbeVerdict(
            True,
            verdict.match if verdict.kind != "no_gold" else None,
            verdict.kind,
            verdict.extracted,
            str(verdict.details.get("reason")) if verdict.details.get("reason") else None,
            dict(verdict.details),
            verdict.confidence,
        )

    def _get_sandbox(self) -> Sandbox | None:
        if self._sandbox is not None or self._sandbox_error is not None:
            return self._sandbox
        try:
            self._sandbox = self._stack.enter_context(Sandbox())
        except (RunFailure, OSError) as exc:  # the sandbox could not start: say why, judge nothing
            log.warning("the PoT sandbox did not start: %s", exc)
            self._sandbox_error = f"the sandbox did not start ({exc})"
        return self._sandbox

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> AnswerJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["AnswerJudge", "ProbeVerdict", "unchecked"]
