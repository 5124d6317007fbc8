"""The extraction ladder, program answers, sandbox results, and hostile inputs.

Hostile inputs are only run, never timed: a regression to super-linear work shows up as a hung
test, which the suite's own timeout catches, not as a flaky timing assertion.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from services.validation.answers import (
    MAX_RESPONSE_CHARS,
    cut_continuation,
    extract_final_answer,
    extract_ladder,
)
from services.validation.gold import parse_gold
from services.validation.matching import judge_answer_text, judge_cot, judge_execution, judge_program_answer
from services.validation.sandbox import Answer, ExecutionKind, ExecutionResult
from services.validation.verdict import Verdict


def test_ladder_reports_marker_confidence_and_candidates() -> None:
    extraction = extract_final_answer("First \\boxed{3}, then \\boxed{4}.\nThe answer is 5.")
    assert (extraction.text, extraction.marker, extraction.confidence) == ("4", "boxed", "high")
    assert extraction.candidates == ["3", "4"]
    assert [e.marker for e in extract_ladder("The answer is 5.\n#### 5")] == [
        "hashes",
        "answer_is",
        "last_number",
    ]
    fallback = extract_final_answer("3 apples and 4 pears, 7 fruits in all")
    assert (fallback.text, fallback.marker, fallback.confidence) == ("7", "last_number", "low")
    assert fallback.candidates == ["3", "4", "7"]
    none = extract_final_answer("no digits here")
    assert (none.text, none.marker) == (None, "none")


def test_sentence_end_respects_decimals_and_abbreviations() -> None:
    assert extract_final_answer("The answer is 2.5. Next we...").text == "2.5"
    assert extract_final_answer("The answer is Mrs. Hilt. She wins.").text == "Mrs. Hilt"
    assert extract_final_answer("The answer is 3:30 p.m. on Monday.").text == "3:30 p.m. on Monday"


def test_continuation_is_cut_only_after_an_answer() -> None:
    text = "The answer is 18.\nQuestion: Tom has 5 cars.\nThe answer is 5."
    body, cut_at = cut_continuation(text)
    assert body == "The answer is 18.\n" and cut_at == len(body)
    restated = "Let me restate it.\nQuestion: how many eggs?\nShe has 9 eggs.\nThe answer is 9."
    assert cut_continuation(restated) == (restated, None)
    assert cut_continuation("Question: echo\n#### 4") == ("Question: echo\n#### 4", None)
    assert cut_continuation("18 eggs</s>Q: 5")[0] == "18 eggs"
    verdict = judge_cot(text, "18")
    assert verdict.match and verdict.details["continuation_cut_at"] == len(body)


def test_low_confidence_is_said_in_the_verdict() -> None:
    verdict = judge_cot("So 3 + 15 = 18 apples remain", "18")
    assert (verdict.kind, verdict.marker, verdict.confidence) == ("match", "last_number", "low")
    assert verdict.to_json()["confidence"] == "low"


def test_ambiguous_boxes_list_their_values() -> None:
    verdict = judge_cot("\\boxed{18} or \\boxed{\\frac{36}{2}} or \\boxed{20}", "18")
    assert verdict.kind == "ambiguous" and not verdict.match
    assert verdict.details["candidates"] == ["18", "20"]


@pytest.mark.parametrize(
    ("answer", "gold", "kind", "value"),
    [
        (72, "72", "match", "72"),
        (72.0, "72", "match", "72"),
        (0.1 * 3, "0.3", "match", "3/10"),
        (17.999999999999996, "18", "match", "18"),
        (18.4, "18", "mismatch", "92/5"),
        (10 / 3, "3.333", "match", "333333333333/100000000000"),
        (Fraction(7, 9), "7/9", "match", "7/9"),
        (0.5, "50", "mismatch", "1/2"),
        ("18 apples", "18", "match", "18"),
        ("[36, 12]", "36; 12", "match", "36; 12"),
        ([36, 12], "36; 12", "match", "36; 12"),
        ([18], "18", "match", "18"),
        ([18, 20], "18", "ambiguous", None),
        (True, "Yes", "match", "yes"),
        (True, "1", "mismatch", None),
        (None, "1", "no_answer", None),
        (float("nan"), "1", "mismatch", None),
        ("3:30 pm", "3:30 p.m.", "match", "3:30 p.m."),
        ("John", "John", "match", "john"),
        (6, "6th", "match", "6"),
        (object(), "1", "mismatch", None),
    ],
)
def test_program_answers_use_the_same_comparison(
    answer: object, gold: str, kind: str, value: str | None
) -> None:
    verdict = judge_program_answer(answer, gold)
    assert (verdict.kind, verdict.marker) == (kind, "program"), verdict.to_json()
    if value is not None:
        assert verdict.value == value


@pytest.mark.parametrize(
    ("record", "gold", "kind"),
    [
        (Answer("int", "72"), "72", "match"),
        (Answer("fraction", "5/2"), "2.5", "match"),
        (Answer("decimal", "2.50"), "2.5", "match"),
        (Answer("decimal", "1E+2"), "100", "match"),
        (Answer("decimal", "NaN"), "1", "no_answer"),
        (Answer("float", "inf"), "1", "mismatch"),
        (Answer("bool", "False"), "No", "match"),
        (Answer("none", ""), "1", "no_answer"),
        (Answer("text", "The answer is 9", truncated=True), "9", "match"),
        (Answer("int", "9" * 5000), "9", "mismatch"),
    ],
)
def test_sandbox_answer_records(record: Answer, gold: str, kind: str) -> None:
    verdict = judge_program_answer(record, gold)
    assert verdict.kind == kind, verdict.to_json()
    assert verdict.details.get("truncated", False) == record.truncated


def test_execution_results_pass_failure_kinds_through() -> None:
    ok = ExecutionResult(kind=ExecutionKind.OK, answer=Answer("float", "72.0"), duration_s=0.01)
    assert judge_execution(ok, "72").kind == "match"
    for kind in ("error", "timeout", "memory", "output_cap", "signal"):
        result = ExecutionResult(kind=ExecutionKind(kind), error_type="X", error_message="went wrong")
        verdict = judge_execution(result, "72")
        assert (verdict.kind, verdict.match, verdict.marker) == (kind, False, "program")
        assert verdict.details["reason"] == "went wrong"
    no_answer = judge_execution(ExecutionResult(kind=ExecutionKind.NO_ANSWER), "72")
    assert no_answer.kind == "no_answer"


def test_answer_text_from_another_tool() -> None:
    assert judge_answer_text("$1,080", "1080").match
    assert judge_answer_text("18", None).kind == "no_gold"
    assert judge_answer_text("18", parse_gold("18"), marker="given").marker == "given"


def test_verdict_rejects_contradictions() -> None:
    with pytest.raises(ValueError):
        Verdict(match=True, kind="mismatch")
    with pytest.raises(ValueError):
        Verdict(match=False, kind="maybe")


def test_gold_shapes() -> None:
    assert parse_gold("-(1/3)").canonical == "-1/3"
    assert parse_gold("3:30 p.m.").shape == "clock"
    assert parse_gold("11:30").shape == "colon"
    assert parse_gold("36 (years old); 12 (years old)").canonical == "36; 12"
    assert parse_gold("They are equal").shape == "text"
    assert parse_gold(" ").shape == "none"
    assert parse_gold("2.50").number.decimals == 2


HOSTILE = {
    "megabyte of digits": "9" * 1_000_000,
    "just under the limit": "9" * (MAX_RESPONSE_CHARS - 1),
    "digits and spaces": "1 " * (MAX_RESPONSE_CHARS // 2 - 1),
    "commas": "1," * (MAX_RESPONSE_CHARS // 2 - 1),
    "tower of exponents": "\\boxed{" + "9^" * 60 + "9}",
    "nested braces": "\\boxed{" + "{" * 90_000,
    "many boxes": "\\boxed{1}\\boxed{2}" * 5_000,
    "many markers": "the answer is " * 7_000,
    "many questions": "x\nQuestion: 1\n" * 7_000,
    "fractions": "\\frac{1}{2}" * 9_000,
    "equals": "= " * 49_000 + "18",
    "huge exponent": "The answer is 1e999999",
    "huge power": "\\boxed{2^{99999999}}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_inputs_get_a_verdict(name: str) -> None:
    text = HOSTILE[name]
    for gold in ("18", "36; 12", "3:30 p.m.", "John"):
        verdict = judge_cot(text, gold)
        assert not verdict.match or name == "equals", (name, gold, verdict.to_json())
    if len(text) > MAX_RESPONSE_CHARS:
        assert judge_cot(text, "18").kind == "too_long"
