"""The answer-matching table: (response, gold, expected verdict) rows across every shape.

Each row states the verdict kind and, where one is read, the canonical value and the marker it
came from. Golds are written as the corpora write them (GSM8K `1,000`, SVAMP `12.0`, ASDiv
`9 (apples)`, `2:3`, `3:30 p.m.`, `36 (years old); 12 (years old)`).
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

from services.validation.matching import judge_cot


class Case(NamedTuple):
    id: str
    response: str
    gold: str
    kind: str
    value: str | None = None
    marker: str | None = None


CASES = [
    # --- markers and the ladder ---------------------------------------------------------------
    Case("hashes", "She sells 16 - 3 - 4 = 9 eggs.\n9 * 2 = 18\n#### 18", "18", "match", "18", "hashes"),
    Case("hashes-comma", "Total 1,000 + 80 = 1,080\n#### 1,080", "1,080", "match", "1080", "hashes"),
    Case("boxed", "So she makes $\\boxed{18}$ dollars.", "18", "match", "18", "boxed"),
    Case("boxed-nested-text", "\\boxed{\\text{18 dollars}}", "18", "match", "18", "boxed"),
    Case("boxed-beats-answer-is", "The answer is 20. Recheck: \\boxed{18}", "18", "match", "18", "boxed"),
    Case("boxed-repeated-same", "\\boxed{18} ... so again \\boxed{18.0}", "18", "match", "18", "boxed"),
    Case("boxed-two-values", "It is \\boxed{18} or \\boxed{20}.", "18", "ambiguous", None, "boxed"),
    Case("answer-is", "Step 1: 3 + 4 = 7.\nThe answer is 7.", "7", "match", "7", "answer_is"),
    Case("final-answer-colon", "Work...\nFinal Answer: 42", "42", "match", "42", "answer_is"),
    Case("markdown-answer", "Work...\n**Answer:** 42 apples", "42", "match", "42", "answer_is"),
    Case("answer-next-line", "The answer is:\n\n**1,234**", "1234", "match", "1234", "answer_is"),
    Case(
        "answer-is-last-wins",
        "The answer is 5. Wait, that is wrong.\nThe answer is 6.",
        "6",
        "match",
        "6",
        "answer_is",
    ),
    Case("answer-line", "3 boxes of 6 eggs each.\n18", "18", "match", "18", "answer_line"),
    Case("answer-line-currency", "Total cost:\n$18.00", "18", "match", "18", "answer_line"),
    Case("last-number-low", "She has 3 + 15 = 18 apples in the end.", "18", "match", "18", "last_number"),
    Case("no-number", "I cannot solve this problem.", "18", "no_answer"),
    Case("empty", "", "18", "no_answer"),
    Case(
        "skip-empty-marker",
        "Answer: let's think step by step. 5 + 13 = 18 apples.",
        "18",
        "match",
        "18",
        "last_number",
    ),
    # --- continuations ------------------------------------------------------------------------
    Case(
        "continuation-cut",
        "The answer is 18.\n\nQuestion: Tom has 5 cars. How many?\n5",
        "18",
        "match",
        "18",
        "answer_is",
    ),
    Case(
        "continuation-hashes", "#### 18\nQ: A new problem with 7 cats\n#### 7", "18", "match", "18", "hashes"
    ),
    Case(
        "continuation-token",
        "She makes 18 dollars.<|im_end|>\nThe answer is 99",
        "18",
        "match",
        "18",
        "last_number",
    ),
    Case(
        "restated-question-kept",
        "Let me restate.\nQuestion: how many eggs remain?\nThe answer is 9.",
        "9",
        "match",
        "9",
        "answer_is",
    ),
    Case("echoed-question", "Question: How many?\nShe has 4 + 5 = 9.\n#### 9", "9", "match", "9", "hashes"),
    # --- number formats -----------------------------------------------------------------------
    Case("thousands", "The answer is 1,234,567.", "1234567", "match", "1234567"),
    Case("bad-thousands", "The answer is 1,23,456.", "123456", "no_answer"),
    Case("currency-euro", "The answer is €45.", "45", "match", "45"),
    Case("percent-kept", "The answer is 50%.", "50", "match", "50"),
    Case("percent-no-x100", "The answer is 50%.", "0.5", "mismatch", "50"),
    Case("no-div100", "The answer is 0.5.", "50", "mismatch", "1/2"),
    Case("units-after", "The answer is 12 square feet.", "12", "match", "12"),
    Case("unit-power", "#### 12 cm^2", "12", "match", "12"),
    Case("unit-superscript", "#### 12 m²", "12", "match", "12"),
    Case("latex-frac", "\\boxed{\\frac{5}{2}}", "2.5", "match", "5/2"),
    Case("latex-dfrac-gold-fraction", "\\boxed{\\dfrac{10}{4}}", "5/2", "match", "5/2"),
    Case("mixed-number", "\\boxed{7\\frac{1}{2}}", "7.5", "match", "15/2"),
    Case("latex-thousands", "\\boxed{1{,}000}", "1000", "match", "1000"),
    Case("latex-thin-space", "\\boxed{1\\,000}", "1000", "match", "1000"),
    Case("latex-neg-space", "\\boxed{1\\!000}", "1000", "match", "1000"),
    Case("unicode-minus", "The answer is \u22125.", "-5", "match", "-5"),
    Case("scientific", "The answer is 1.5e3.", "1500", "match", "1500"),
    Case("times-ten", "\\boxed{1.5 \\times 10^{3}}", "1500", "match", "1500"),
    Case("leading-zeros", "#### 007", "7", "match", "7"),
    Case("trailing-point-zero", "#### 18.0", "18", "match", "18"),
    Case("gold-trailing-zero", "#### 18", "18.0", "match", "18"),
    Case("fullwidth-digits", "#### １８", "18", "match", "18"),
    Case("equation-rhs", "The answer is 3 \\times 6 = 18.", "18", "match", "18"),
    Case("clause-cut", "The answer is 18, since 16 - 3 - 4 = 9 and 9 * 2 = 18.", "18", "match", "18"),
    Case("subtraction-then-equals", "The answer is 18 - 5 = 13.", "13", "match", "13"),
    Case("expression", "\\boxed{12 \\times 3}", "36", "match", "36"),
    Case("parenthesised-aside", "The answer is 18 (6 × 3).", "18", "match", "18"),
    Case("two-numbers", "The answer is 18 or 20.", "18", "ambiguous"),
    Case("range", "The answer is 2-3 hours.", "2", "ambiguous"),
    Case("pi-not-number", "\\boxed{2\\pi}", "2", "no_answer"),
    Case("long-digits", "#### " + "9" * 300, "9", "no_answer"),
    # --- integer gold: exact only -------------------------------------------------------------
    Case("integer-off-by-decimal", "#### 18.4", "18", "mismatch", "92/5"),
    Case("integer-large-exact", "#### 1,000,000", "1000001", "mismatch", "1000000"),
    Case("integer-wrong", "The answer is 17.", "18", "mismatch", "17"),
    # --- non-integer gold: precision as written -----------------------------------------------
    Case("precision-fraction", "The answer is 10/3.", "3.333", "match", "10/3"),
    Case("precision-more-digits", "The answer is 3.3333.", "3.333", "match", "33333/10000"),
    Case("precision-fewer-digits", "The answer is 3.33.", "3.333", "mismatch", "333/100"),
    Case("precision-rounds-half-unit", "The answer is 2.54.", "2.5", "match", "127/50"),
    Case("precision-outside", "The answer is 2.56.", "2.5", "mismatch", "64/25"),
    Case("precision-written-zero", "The answer is 9.8.", "9.80", "match", "49/5"),
    Case("fraction-gold-decimal", "Final answer: 0.78", "7/9", "match", "39/50"),
    Case("fraction-gold-one-place", "Final answer: 0.8", "7/9", "mismatch", "4/5"),
    Case("fraction-gold-equivalent", "Final answer: 14/18", "7/9", "match", "7/9"),
    Case("negative-fraction-gold", "\\boxed{-\\frac{1}{3}}", "-(1/3)", "match", "-1/3"),
    Case("asdiv-unit-gold", "The answer is 9 apples.", "9 (apples)", "match", "9"),
    # --- several values -----------------------------------------------------------------------
    Case(
        "multi-in-order", "So the answers are 36 and 12.", "36 (years old); 12 (years old)", "match", "36; 12"
    ),
    Case(
        "multi-wrong-order",
        "So the answers are 12 and 36.",
        "36 (years old); 12 (years old)",
        "mismatch",
        "12; 36",
    ),
    Case("multi-missing", "The answer is 36.", "36 (years old); 12 (years old)", "mismatch", "36"),
    Case(
        "multi-last-numbers", "Father: 36 years.\nSon: 12 years", "36; 12", "match", "36; 12", "last_number"
    ),
    # --- ratios and clock times ---------------------------------------------------------------
    Case("ratio", "The answer is 2:3.", "2:3", "match", "2:3"),
    Case("ratio-spaces", "The ratio is 2 : 3", "2:3", "match", "2:3", "last_line"),
    Case("ratio-to", "The answer is 2 to 3.", "2:3", "match", "2:3"),
    Case("ratio-not-reduced", "The answer is 4:6.", "2:3", "mismatch", "4:6"),
    Case("ratio-not-fraction", "The answer is 2/3.", "2:3", "no_answer"),
    Case("clock-pm", "The answer is 3:30 pm.", "3:30 p.m.", "match", "3:30 p.m."),
    Case("clock-24h", "The answer is 15:30.", "3:30 p.m.", "match", "3:30 p.m."),
    Case("clock-bare", "The answer is 3:30.", "3:30 p.m.", "mismatch", "3:30"),
    Case("clock-am-vs-pm", "The answer is 3:30 a.m.", "3:30 p.m.", "mismatch", "3:30 a.m."),
    Case("clock-seconds", "#### 9:03:36 AM", "9:03:36 a.m.", "match", "9:03:36 a.m."),
    Case("clock-no-meridiem-gold", "The answer is 11:30 a.m.", "11:30", "match", "11:30"),
    # --- yes/no, ordinals, names --------------------------------------------------------------
    Case("yes", "Yes, she has enough money.", "Yes", "match", "yes", "last_line"),
    Case("yes-marker", "The answer is yes.", "Yes", "match", "yes"),
    Case("no-vs-yes", "The answer is no.", "Yes", "mismatch", "no"),
    Case("true-synonym", "#### True", "Yes", "match", "yes"),
    Case("ordinal", "She finished in 6th place.", "6th", "match", "6"),
    Case("ordinal-word", "The answer is sixth.", "6th", "match", "6"),
    Case("name", "The answer is John.", "John", "match", "john"),
    Case(
        "name-case-article",
        "The answer is the Cooper wedding.",
        "The Cooper wedding",
        "match",
        "cooper wedding",
    ),
    Case("name-explained", "The answer is Jim, because he ran farther.", "Jim", "match"),
    Case("name-wrong", "The answer is Jimmy.", "Jim", "mismatch", "jimmy"),
    Case("name-more", "The answer is Red and Blue.", "Red", "mismatch"),
    Case("name-abbreviation", "The answer is Mrs. Hilt.", "Mrs. Hilt", "match", "mrs. hilt"),
    Case("equal", "The answer is: they are equal.", "They are equal", "match", "equal"),
    Case("ordinal-date", "The answer is February 3.", "February 3rd", "match", "february 3"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_answer_case(case: Case) -> None:
    verdict = judge_cot(case.response, case.gold)
    assert verdict.kind == case.kind, verdict.to_json()
    assert verdict.match == (case.kind == "match")
    if case.value is not None:
        assert verdict.value == case.value, verdict.to_json()
    if case.marker is not None:
        assert verdict.marker == case.marker, verdict.to_json()
    expected_confidence = "low" if verdict.marker in ("last_number", "last_line") else "high"
    assert verdict.confidence == expected_confidence


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
