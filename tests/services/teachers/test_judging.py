"""`AnswerJudge`: CoT answers are matched, PoT programs run in the sandbox, and a sandbox that
cannot start leaves the program unrun with the reason (the probe then reports it unchecked)."""

from __future__ import annotations

import pytest

from services.kpdd.records import KeyPoints
from services.teachers import judging
from services.teachers.judging import AnswerJudge
from services.validation.sandbox import SandboxError


def _cot(answer: str) -> KeyPoints:
    return KeyPoints("How many?", ["3 + 4"], solution_text="3 + 4 = 7.", final_answer_text=answer)


def test_cot_answers_are_judged_without_a_sandbox() -> None:
    with AnswerJudge() as judge:
        right, wrong = judge.judge(_cot("7."), "7"), judge.judge(_cot("8"), "7")
    assert (right.checked, right.match, right.kind) == (True, True, "match")
    assert (wrong.checked, wrong.match) == (True, False)


class _SandboxThatCannotStart:
    starts = 0

    def __enter__(self) -> _SandboxThatCannotStart:
        type(self).starts += 1
        raise SandboxError("the sandbox fork-server (basic) did not start in 120 s")

    def __exit__(self, *exc: object) -> None:
        pass


def test_a_sandbox_that_cannot_start_leaves_programs_unchecked_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(judging, "Sandbox", _SandboxThatCannotStart)
    program = KeyPoints("How many?", ["3 + 4"], program="ans = 3 + 4\n")
    with AnswerJudge() as judge:
        first, second = judge.judge(program, "7"), judge.judge(program, "7")
    for verdict in (first, second):
        assert (verdict.checked, verdict.match, verdict.kind) == (False, None, "unchecked")
        assert verdict.reason is not None and "did not start in 120 s" in verdict.reason
    assert _SandboxThatCannotStart.starts == 1  # tried once, not once per program
