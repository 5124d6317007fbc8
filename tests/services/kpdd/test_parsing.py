"""Parsing teacher answers: many shapes of good output, and every kind of failure."""

from __future__ import annotations

import pytest

from services.kpdd.parsing import (
    assemble_key_points,
    normalise_finish_reason,
    parse_response,
    parse_stage,
)
from services.kpdd.records import KeyPoints, ParseFailure, Solution

COT = """Core question: How many clips did Natalia sell in April and May?

Problem-solving information:
- Natalia sold 48 clips in April.
- In May she sold half as many.

Solution:
In May she sold 48 / 2 = 24 clips.
Altogether 48 + 24 = 72 clips.
The answer is: 72"""

POT = """Core question: How many clips did Natalia sell in April and May?

Problem-solving information:
- Natalia sold 48 clips in April.
- In May she sold half as many.

Solution:
```python
april = 48
may = april / 2
ans = april + may
```"""


def _kp(result: object) -> KeyPoints:
    assert isinstance(result, KeyPoints), result
    return result


def _failure(result: object, kind: str) -> ParseFailure:
    assert isinstance(result, ParseFailure), result
    assert result.kind == kind, result
    return result


def test_canonical_cot() -> None:
    kp = _kp(parse_response(COT, "stop", "cot"))
    assert kp.core_question == "How many clips did Natalia sell in April and May?"
    assert kp.solving_info == ["Natalia sold 48 clips in April.", "In May she sold half as many."]
    assert kp.solution_text == "In May she sold 48 / 2 = 24 clips.\nAltogether 48 + 24 = 72 clips."
    assert kp.final_answer_text == "72"
    assert kp.program is None and kp.mode == "cot"


def test_canonical_pot() -> None:
    kp = _kp(parse_response(POT, "stop", "pot"))
    assert kp.program == "april = 48\nmay = april / 2\nans = april + may\n"
    assert kp.solution_text is None and kp.final_answer_text is None and kp.mode == "pot"


def test_extra_whitespace_and_crlf() -> None:
    text = "\r\n\r\n   " + COT.replace("\n", "\r\n   \r\n").replace("- ", "  -   ") + "   \r\n\r\n"
    kp = _kp(parse_response(text, "stop", "cot"))
    assert kp.core_question.startswith("How many clips")
    assert kp.solving_info == ["Natalia sold 48 clips in April.", "In May she sold half as many."]
    assert kp.final_answer_text == "72"


def test_markdown_bold_and_hash_headings() -> None:
    text = (
        "**Core question:** How many clips?\n\n"
        "## Problem-Solving Information\n"
        "* **48** clips in April\n"
        "* half as many in May\n\n"
        "### Step-by-step solution:\n"
        "48 / 2 = 24\n"
        "**The answer is: 72**"
    )
    kp = _kp(parse_response(text, "stop", "cot"))
    assert kp.core_question == "How many clips?"
    assert kp.solving_info == ["48 clips in April", "half as many in May"]
    assert kp.final_answer_text == "72"


def test_bold_heading_with_colon_outside() -> None:
    text = COT.replace("Core question:", "**Core question**:").replace("Solution:", "__Solution__")
    assert _kp(parse_response(text, "stop", "cot")).core_question.startswith("How many")


def test_numbered_lists_and_numbered_headings() -> None:
    text = (
        "1. Core question: How many clips?\n"
        "2. Problem-solving information:\n"
        "   1) 48 clips in April\n"
        "   2) half as many in May\n"
        "3. Solution:\n"
        "24 + 48 = 72\n"
        "The answer is: 72"
    )
    kp = _kp(parse_response(text, "stop", "cot"))
    assert kp.solving_info == ["48 clips in April", "half as many in May"]
    assert kp.final_answer_text == "72"


def test_core_question_on_the_next_line_and_info_without_bullets() -> None:
    text = (
        "Core question:\nHow many clips\naltogether?\n\n"
        "Problem-solving information:\n48 in April\nhalf as many in May\n\n"
        "Solution:\nThe answer is: 72"
    )
    kp = _kp(parse_response(text, "stop", "cot"))
    assert kp.core_question == "How many clips altogether?"
    assert kp.solving_info == ["48 in April", "half as many in May"]
    assert kp.solution_text == ""


def test_continuation_lines_join_their_item() -> None:
    text = COT.replace("- In May she sold half as many.", "- In May she sold\n  half as many.")
    assert _kp(parse_response(text, "stop", "cot")).solving_info[1] == "In May she sold half as many."


@pytest.mark.parametrize(
    ("answer_line", "expected"),
    [
        ("The answer is: 72", "72"),
        ("The answer is 72.", "72"),
        ("So the answer is: $1,200.", "$1,200"),
        ("Therefore, the final answer is: 3.5", "3.5"),
        ("#### 72", "72"),
        ("####72", "72"),
        ("Final answer: 72 clips", "72 clips"),
        ("**Final Answer:** 72", "72"),
        ("Answer: 72", "72"),
        ("The answer is: \\boxed{72}", "72"),
        ("Thus the total is \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("The answer is: **72**", "72"),
        ("**The answer is:** 72", "72"),
        ("> The answer is: 72", "72"),
    ],
)
def test_answer_markers(answer_line: str, expected: str) -> None:
    text = COT.replace("The answer is: 72", answer_line)
    assert _kp(parse_response(text, "stop", "cot")).final_answer_text == expected


def test_the_last_answer_marker_wins() -> None:
    text = COT.replace("The answer is: 72", "The answer is: 70\nWait, I made an error.\nThe answer is: 72")
    kp = _kp(parse_response(text, "stop", "cot"))
    assert kp.final_answer_text == "72"
    assert "The answer is: 70" in (kp.solution_text or "")


def test_bare_code_without_fences() -> None:
    text = POT.replace("```python\n", "").replace("\n```", "")
    assert (
        _kp(parse_response(text, "stop", "pot")).program == "april = 48\nmay = april / 2\nans = april + may\n"
    )


def test_bare_code_followed_by_prose() -> None:
    text = POT.replace("```python\n", "Here is the program:\n").replace("\n```", "\nThis prints nothing.")
    assert (
        _kp(parse_response(text, "stop", "pot")).program == "april = 48\nmay = april / 2\nans = april + may\n"
    )


def test_multiple_code_blocks_take_the_one_that_assigns_ans() -> None:
    text = (
        POT.replace(
            "```python\napril",
            "First the data:\n```python\nfacts = {'april': 48}\n```\n"
            "Then:\n```\noutput: 72\n```\n```python\napril",
        )
        + "\n```text\nans = 0\n```\n```python\nprint(ans)\n```"
    )
    kp = _kp(parse_response(text, "stop", "pot"))
    assert kp.program == "april = 48\nmay = april / 2\nans = april + may\n"


def test_the_last_block_assigning_ans_wins() -> None:
    text = POT + "\nCorrected:\n```py\nans = 48 + 48 / 2\n```"
    assert _kp(parse_response(text, "stop", "pot")).program == "ans = 48 + 48 / 2\n"


def test_unclosed_fence_runs_to_the_end() -> None:
    text = POT.removesuffix("```")
    assert (
        _kp(parse_response(text, "stop", "pot")).program == "april = 48\nmay = april / 2\nans = april + may\n"
    )


def test_annotated_and_augmented_ans() -> None:
    assert _kp(parse_response(POT.replace("ans = april", "ans: float = april"), "stop", "pot")).program
    text = POT.replace("ans = april + may", "ans = april\nans += may")
    assert "ans += may" in (_kp(parse_response(text, "stop", "pot")).program or "")


@pytest.mark.parametrize(
    ("text", "mode", "needle"),
    [
        (COT.replace("Core question:", "Question:"), "cot", "Core question"),
        (COT.split("\n\nSolution:", maxsplit=1)[0], "cot", "Solution"),
        (COT.replace("Problem-solving information:", "Facts:"), "cot", "Problem-solving information"),
        (COT.replace("The answer is: 72", "So she sold 72 clips."), "cot", "final answer"),
        (COT.replace("The answer is: 72", "The answer is:   "), "cot", "final answer"),
        (POT.replace("ans = ", "result = "), "pot", "ans"),
        (POT.replace("ans = april + may", "ans = april +"), "pot", "not valid Python"),
        (
            COT.replace("Core question: How many clips did Natalia sell in April and May?", "Core question:"),
            "cot",
            "core question is empty",
        ),
        (
            COT.replace("- Natalia sold 48 clips in April.\n- In May she sold half as many.", ""),
            "cot",
            "information is empty",
        ),
        ("Solution:\n", "cot", "missing"),
        ("Just some prose about clips, 72 of them.", "cot", "missing"),
    ],
)
def test_malformed(text: str, mode: str, needle: str) -> None:
    failure = _failure(parse_response(text, "stop", mode), "malformed")  # type: ignore[arg-type]
    assert needle.lower() in failure.message.lower()


def test_prose_mentioning_solution_is_not_a_heading() -> None:
    text = "Core question: How many?\n\nProblem-solving information:\n- 48\n\nSolution is easy: 72"
    _failure(parse_response(text, "stop", "cot"), "malformed")


def test_truncated_whatever_the_text() -> None:
    _failure(parse_response(COT[:120], "length", "cot"), "truncated")
    _failure(parse_response(COT, "length", "cot"), "truncated")  # the answer may have been cut
    _failure(parse_response("", "length", "pot"), "truncated")


def test_empty() -> None:
    _failure(parse_response("", "stop", "cot"), "empty")
    _failure(parse_response(None, "stop", "cot"), "empty")
    _failure(parse_response(" \n\t ", "other", "pot"), "empty")


def test_refused_by_provider_or_by_text() -> None:
    failure = _failure(parse_response(None, "refusal", "cot"), "refused")
    assert "provider" in failure.message
    _failure(parse_response(COT, "refusal", "cot"), "refused")
    for text in (
        "I'm sorry, but I can't help with that request.",
        "I cannot assist with this.",
        "As an AI, I won't do that.",
        "Sorry, I am unable to comply.",
    ):
        _failure(parse_response(text, "stop", "cot"), "refused")
    # an apology followed by usable key points is not a refusal
    assert _kp(parse_response("I'm sorry for the delay.\n\n" + COT, "stop", "cot")).final_answer_text == "72"


def test_never_raises_on_hostile_text() -> None:
    hostile = [
        "\x00" * 100,
        "```python\n" + "(" * 5000 + "\n```",
        "Core question: " + "x" * 5000,
        "Solution:\n```python\nans = 1\x00\n```",
        "Core question: q\nProblem-solving information:\n- a\nSolution:\n```python\n"
        + "ans = (" * 2000
        + "\n```",
        "\\boxed{" * 1000,
        "#" * 10000,
        "Core question:" * 1000,
    ]
    for text in hostile:
        for mode in ("cot", "pot"):
            result = parse_response(text, "stop", mode)
            assert isinstance(result, KeyPoints | ParseFailure)
            for stage in ("core_question", "solving_info", "solution"):
                assert parse_stage(text, "stop", mode, stage) is not None


def test_overlong_core_question_is_malformed() -> None:
    _failure(parse_stage("Core question: " + "why " * 400, "stop", "cot", "core_question"), "malformed")


# --- staged ---------------------------------------------------------------------------------------


def test_stage_core_question_with_or_without_heading() -> None:
    assert parse_stage("Core question: How many cows?", "stop", "cot", "core_question") == "How many cows?"
    assert parse_stage("  How many cows?\n", "stop", "pot", "core_question") == "How many cows?"
    assert parse_stage("**Core question:**\nHow many cows?\n\nNotes.", "stop", "cot", "core_question") == (
        "How many cows?"
    )
    _failure(
        parse_stage("Sure!\n\nHow many cows?\n\nHope it helps.", "stop", "cot", "core_question"), "malformed"
    )
    _failure(parse_stage("Solution:\nThe answer is: 3", "stop", "cot", "core_question"), "malformed")


def test_stage_solving_info() -> None:
    text = "Problem-solving information:\n- 12 cows\n- buys 5\n- sells 3"
    assert parse_stage(text, "stop", "cot", "solving_info") == ["12 cows", "buys 5", "sells 3"]
    assert parse_stage("1. 12 cows\n2. buys 5", "stop", "cot", "solving_info") == ["12 cows", "buys 5"]
    _failure(parse_stage("The farmer has 12 cows and buys 5.", "stop", "cot", "solving_info"), "malformed")
    _failure(parse_stage("Problem-solving information:\n", "stop", "cot", "solving_info"), "malformed")


def test_stage_solution_and_assembly() -> None:
    cot = parse_stage("Solution:\n12 + 5 - 3 = 14\nThe answer is: 14", "stop", "cot", "solution")
    assert cot == Solution(solution_text="12 + 5 - 3 = 14", final_answer_text="14")
    pot = parse_stage("```python\nans = 12 + 5 - 3\n```", "stop", "pot", "solution")
    assert pot == Solution(program="ans = 12 + 5 - 3\n")
    assert isinstance(cot, Solution)
    kp = assemble_key_points("How many cows?", ["12 cows"], cot)
    assert kp == KeyPoints("How many cows?", ["12 cows"], "12 + 5 - 3 = 14", "14", None)
    _failure(parse_stage("12 + 5 - 3 = 14", "stop", "cot", "solution"), "malformed")
    _failure(parse_stage("Solution:\n```python\nx = 1\n```", "stop", "pot", "solution"), "malformed")
    _failure(parse_stage("Solution:\nThe answer is: 1", "length", "cot", "solution"), "truncated")
    _failure(parse_stage("I'm sorry, I can't help with that.", "stop", "pot", "solution"), "refused")


def test_stage_all_is_the_single_parse() -> None:
    assert parse_stage(COT, "stop", "cot", "all") == parse_response(COT, "stop", "cot")


# --- finish reasons -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "raw", "refusal", "expected"),
    [
        ("openai", "stop", False, "stop"),
        ("openai", "length", False, "length"),
        ("openai", "content_filter", False, "refusal"),
        ("openai", "stop", True, "refusal"),
        ("openai", "tool_calls", False, "other"),
        ("openai", None, False, "other"),
        ("anthropic", "end_turn", False, "stop"),
        ("anthropic", "stop_sequence", False, "stop"),
        ("anthropic", "max_tokens", False, "length"),
        ("anthropic", "refusal", False, "refusal"),
        ("anthropic", "tool_use", False, "other"),
    ],
)
def test_normalise_finish_reason(provider: str, raw: str | None, refusal: bool, expected: str) -> None:
    assert normalise_finish_reason(provider, raw, refusal=refusal) == expected
