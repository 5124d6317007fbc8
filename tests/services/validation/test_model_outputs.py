"""A held-out set of realistic model outputs with careful labels, judged end to end.

Endings of Chain-of-Thought responses in the styles real teachers write (GPT-4o's Markdown and
`\\[ \\boxed{} \\]`, Claude's prose, Llama's "The final answer is: $\\boxed{}$", Qwen's
`\\(\\boxed{}\\)`, few-shot continuations that run on into a new question), and a few program
answers as floats. Each row is labelled with what a careful human grader would say: the verdict
kind and, where an answer is read, its canonical value. `agreement()` is the share of rows the
judges get right; the test requires every row.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

from services.validation.matching import judge_cot, judge_program_answer
from services.validation.reading import is_float_text


class Row(NamedTuple):
    id: str
    response: str
    gold: str
    kind: str
    value: str | None = None


JANET = (
    "Janet's ducks lay 16 eggs per day. She eats 3 for breakfast and bakes muffins with 4, "
    "so she has 16 - 3 - 4 = 9 eggs left. She sells each egg for $2, so she makes 9 × 2 = 18 "
    "dollars.\n\n"
)

FIRST_COT_ROWS = [
    # --- answer markers with a qualifier, and text after the statement -----------------------
    Row(
        "qualifier-arabic-new-question",
        "Tom has 5 bags of 8 marbles and buys 2 more, so 5 × 8 + 2 = 42.\n"
        "The answer (in arabic numerals) is 42.\n\n"
        "Question: A baker makes 20 loaves and sells 12. How many loaves are left?",
        "42",
        "match",
        "42",
    ),
    Row(
        "qualifier-fraction-note",
        "The tank holds 3 parts and 2 are filled.\nThe answer (as a fraction) is 2/3.\n\n"
        "Note: 2 of the 3 parts are filled, so 1 part, or 1/3, is empty.",
        "2/3",
        "match",
        "2/3",
    ),
    Row(
        "qualifier-rounded",
        "Total is 56.7 dollars.\nThe answer (rounded to the nearest dollar) is $57.\n\n"
        "Let me know if you have another question about 3 or 4 items!",
        "57",
        "match",
        "57",
    ),
    Row(
        "answer-to-the-question-new-question",
        "She has 20 - 5 = 15 marbles.\nThe answer to the question is 15 marbles.\n\n"
        "New question: Tom has 7 marbles and loses 2. How many does he have?",
        "15",
        "match",
        "15",
    ),
    Row(
        "answer-to-this-problem",
        "The total is 1,000 + 80 = 1,080.\nThe answer to this problem is 1,080.\n\n"
        "Try a similar one: what is 1,000 + 90?",
        "1080",
        "match",
        "1080",
    ),
    Row(
        "answer-commas-in-dollars",
        "She buys 7 items at $5 each: 7 × 5 = 35.\nThe answer, in dollars, is 35.\n\n"
        "What if she bought 4 more? Then she would spend 35 + 4 × 5 = 55 dollars.",
        "35",
        "match",
        "35",
    ),
    Row(
        "answer-in-minutes-paren-note",
        "It takes 3/4 of an hour.\nThe answer (in minutes) is 45.\n(Note: that is 3/4 of an hour.)",
        "45",
        "match",
        "45",
    ),
    Row(
        "final-answer-rounded",
        "Area is 3.14159...\nTherefore, the final answer (rounded to two decimal places) is 3.14.",
        "3.14",
        "match",
        "157/50",
    ),
    Row(
        "note-with-hypothetical-answer",
        "Tom buys 4 packs of 6: 4 × 6 = 24.\nThe answer is 24.\n\n"
        "Note: If Tom had bought 2 more packs, the answer would be 36.",
        "24",
        "match",
        "24",
    ),
    Row(
        "bold-note-hypothetical",
        "**Final Answer:** 24\n\n*Note: if the question meant both days, the answer would be 48.*",
        "24",
        "match",
        "24",
    ),
    Row(
        "markdown-question-2",
        "So 8 × 7 = 56.\nTherefore, the answer is 56.\n\n"
        "**Question 2:** Sara has 14 apples and eats 5. How many are left?\n"
        "14 - 5 = 9. The answer is 9.",
        "56",
        "match",
        "56",
    ),
    Row(
        "few-shot-q-continuation",
        "There are 3 cars and 2 more arrive, 3 + 2 = 5. So the answer is 5.\n\n"
        "Q: There are 15 trees in the grove. Workers plant 6 more. How many trees?\n"
        "A: 15 + 6 = 21. The answer is 21.",
        "5",
        "match",
        "5",
    ),
    Row(
        "human-turn",
        "The answer is 56.\n\nHuman: Thanks! Now what is 7 × 9?\n\nAssistant: 63",
        "56",
        "match",
        "56",
    ),
    # --- final answer statement vs earlier uses of "answer"; "which is N", "= N" -------------
    Row(
        "final-beats-verification",
        JANET + "The final answer is 18.\n\nTo verify the answer: 18 ÷ 2 = 9 eggs sold, which matches.",
        "18",
        "match",
        "18",
    ),
    Row(
        "header-answer-reasoning",
        "Answer: 16 - 3 - 4 = 9 eggs are left to sell.\n9 × $2 = $18.\nJanet makes $18 every day.",
        "18",
        "match",
        "18",
    ),
    Row(
        "answer-header-then-final",
        "Answer: We first find how many eggs remain: 16 - 3 - 4 = 9.\n"
        "She sells each for $2, so 9 × 2 = 18.\nThe final answer is 18.",
        "18",
        "match",
        "18",
    ),
    Row(
        "which-is-of",
        "She gives away 3/4 of her 24 stickers.\nThe answer is 3/4 of 24, which is 18.",
        "18",
        "match",
        "18",
    ),
    Row(
        "which-is-half-of",
        "The answer is half of 36, which is 18 cookies.",
        "18",
        "match",
        "18",
    ),
    Row(
        "which-equals",
        "So the answer is 5 × 12 + 3 × 4, which equals 72.",
        "72",
        "match",
        "72",
    ),
    Row(
        "equals-chain",
        "The answer is 16 - 3 - 4 = 9 eggs × $2 = $18.",
        "18",
        "match",
        "18",
    ),
    Row(
        "answer-expression-equals",
        "The answer is (120 - 30) / 2 = 45 minutes.",
        "45",
        "match",
        "45",
    ),
    Row(
        "which-gives-words",
        "The answer is twice 9, which gives 18.",
        "18",
        "match",
        "18",
    ),
    Row(
        "corrected-final",
        "My first answer was 20, but I forgot the 2 eggs she gives away.\n"
        "Correcting: 16 - 3 - 4 - 2 = 7, and 7 × 2 = 14.\nFinal answer: 14",
        "14",
        "match",
        "14",
    ),
    # --- numbers in words, vulgar fractions, scale words -------------------------------------
    Row("words-eighteen", JANET + "The answer is eighteen.", "18", "match", "18"),
    Row(
        "words-nine-reasoning-3",
        "She has 3 bags with 3 apples each.\nThe answer is nine.",
        "9",
        "match",
        "9",
    ),
    Row(
        "words-three-and-a-half",
        "He walks 2 hours, then 1.5 hours more.\nSo the final answer is three and a half hours.",
        "3.5",
        "match",
        "7/2",
    ),
    Row(
        "vulgar-mixed-joined",
        "Each batch needs 1/2 cup, 5 batches.\nThe answer is 2½ cups.",
        "2.5",
        "match",
        "5/2",
    ),
    Row("vulgar-mixed-spaced", "He needs 2 ½ pizzas.", "2.5", "match", "5/2"),
    Row("vulgar-alone", "The answer is ½.", "0.5", "match", "1/2"),
    Row("vulgar-quarter-mixed", "Each person gets 3¼ pounds.", "3.25", "match", "13/4"),
    Row("vulgar-wrong-value", "The answer is 2½ cups.", "21/2", "mismatch", "5/2"),
    Row(
        "scale-million",
        "The town grew by 500,000.\nThe answer is 1.5 million.",
        "1500000",
        "match",
        "1500000",
    ),
    Row(
        "scale-million-last-number",
        "The city has 2 districts and a population of 2.3 million.",
        "2300000",
        "match",
        "2300000",
    ),
    Row(
        "scale-billion-hashes",
        "3 × 400 million = 1.2 billion\n#### 1.2 billion",
        "1200000000",
        "match",
        "1200000000",
    ),
    Row("scale-thousand", "The answer is 4.5 thousand dollars.", "4500", "match", "4500"),
    Row("words-hundred-twenty-five", "The answer is one hundred twenty-five.", "125", "match", "125"),
    Row(
        "words-two-thousand-five-hundred",
        "The final answer is two thousand five hundred dollars.",
        "2500",
        "match",
        "2500",
    ),
    Row("words-point", "The answer is two point five liters.", "2.5", "match", "5/2"),
    Row("words-three-quarters", "The answer is three quarters of the pie.", "0.75", "match", "3/4"),
    Row("words-twenty-one", "So, 7 × 3 = 21.\nThe answer is twenty-one.", "21", "match", "21"),
    Row("digits-and-a-half", "The answer is 2 and a half hours.", "2.5", "match", "5/2"),
    Row("words-million", "The answer is three million.", "3000000", "match", "3000000"),
    Row(
        "words-hundred-and-five",
        "There are 100 + 5 = 105 sheep.\nThe answer is one hundred and five sheep.",
        "105",
        "match",
        "105",
    ),
    Row(
        "words-unreadable-no-fallback",
        "Each of the 3 crates holds 100 apples, 3 × 100 = 300.\nThe answer is several hundred apples.",
        "300",
        "no_answer",
    ),
    Row(
        "words-dozen-no-fallback",
        "She bakes 6 + 12 = 18 cookies.\nThe answer is a dozen and a half.",
        "18",
        "no_answer",
    ),
    Row("words-wrong-value", "There are 7 cats.\nThe answer is eight.", "7", "mismatch", "8"),
    # --- golds written as a binary float's text ------------------------------------------------
    Row("float-gold-short", "0.1 + 0.2 = 0.3\nThe answer is 0.3.", "0.30000000000000004", "match", "3/10"),
    Row("float-gold-exact-text", "The answer is 33.333333333333336", "33.333333333333336", "match"),
    Row("float-gold-fraction", "\\[\n\\boxed{\\frac{100}{3}}\n\\]", "33.333333333333336", "match", "100/3"),
    Row("float-gold-mixed", "The answer is 16 2/3.", "16.666666666666668", "match", "50/3"),
    Row("float-gold-hashes", "#### 2.3", "2.3000000000000003", "match", "23/10"),
    Row("float-gold-rounded-off", "The answer is 33.33.", "33.333333333333336", "mismatch", "3333/100"),
    Row("float-gold-other-value", "The answer is 0.4.", "0.30000000000000004", "mismatch", "2/5"),
    # --- styles already read correctly (must stay so) ----------------------------------------
    Row(
        "gpt4o-bold-prose",
        JANET + "Therefore, Janet makes **$18** every day at the farmers' market.",
        "18",
        "match",
        "18",
    ),
    Row("gpt4o-final-boxed", JANET + "### Final Answer\n\\[\n\\boxed{18}\n\\]", "18", "match", "18"),
    Row("llama-final-boxed", JANET + "The final answer is: $\\boxed{18}$", "18", "match", "18"),
    Row("qwen-boxed", JANET + "Thus, the answer is \\(\\boxed{18}\\).", "18", "match", "18"),
    Row(
        "claude-prose",
        "Let me work through this step by step.\n\n" + JANET + "Janet makes **$18** per day.",
        "18",
        "match",
        "18",
    ),
    Row(
        "explanation-after",
        "The answer is: 7\n\nExplanation: The train travels 60 × 2 = 120 km.",
        "7",
        "match",
        "7",
    ),
    Row("final-answer-money", "Final answer: $1,250.50", "1250.5", "match", "2501/2"),
    Row("required-answer-rupees", "Hence, the required answer is ₹450.", "450", "match", "450"),
    Row("minerva", "Final Answer: The final answer is $18$. I hope it is correct.", "18", "match", "18"),
    Row("bold-answer-unit", "**Answer:** **18 eggs**", "18", "match", "18"),
    Row("words-and-digits", "The answer is 5 (five).", "5", "match", "5"),
    Row("answer-one-apple", "The answer is one apple.", "1", "match", "1"),
    Row(
        "answer-prompt-echo",
        "Answer: let's think step by step. 5 + 13 = 18 apples.",
        "18",
        "match",
        "18",
    ),
    Row("wrong-answer", JANET + "The answer is 20.", "18", "mismatch", "20"),
    Row("millions-digits", "The answer is 1,000,000.", "1000000", "match", "1000000"),
]

# Written after the judges were changed, and run against them once, untuned (33 of 34 agreed: a
# "P.S." without a colon was then added to the notes that end a response).
LATER_COT_ROWS = [
    Row(
        "b2-gpt-final-bold",
        "First, 12 × 4 = 48 cupcakes.\nThen 48 − 6 = 42.\n\n**Final answer: 42 cupcakes**",
        "42",
        "match",
        "42",
    ),
    Row("b2-claude-so", "So Marco needs **7 more boxes**.\n\nThe answer is 7.", "7", "match", "7"),
    Row(
        "b2-answer-qualified-units",
        "The answer (in cents) is 250.\n\nQuestion: What is 3 + 3?",
        "250",
        "match",
        "250",
    ),
    Row(
        "b2-answer-qualified-decimal",
        "Her average is 87.5.\nThe answer (as a decimal) is 87.5",
        "87.5",
        "match",
        "175/2",
    ),
    Row("b2-answer-qualified-nextline", "The answer (in arabic numerals) is:\n\n**64**", "64", "match", "64"),
    Row("b2-which-is-total", "Total = 3 × 15 + 10, which is 55.\nThe answer is 55.", "55", "match", "55"),
    Row("b2-answer-expr-which", "The answer is 20% of 80, which is 16.", "16", "match", "16"),
    Row("b2-answer-times", "The answer is 4 times 6, which equals 24 legs.", "24", "match", "24"),
    Row(
        "b2-words-forty-two", "Adding them up gives forty-two.\nThe answer is forty-two.", "42", "match", "42"
    ),
    Row("b2-words-one-half", "The answer is one half.", "0.5", "match", "1/2"),
    Row("b2-words-two-thirds", "The answer is two-thirds of the cake.", "2/3", "match", "2/3"),
    Row("b2-vulgar-three-quarters", "She used ¾ of the flour.\nThe answer is ¾.", "0.75", "match", "3/4"),
    Row("b2-vulgar-5-half-bold", "Each gets **5½** slices.", "5.5", "match", "11/2"),
    Row("b2-scale-thousand-dollars", "The answer is $12 thousand.", "12000", "match", "12000"),
    Row("b2-scale-250-million", "#### 250 million", "250000000", "match", "250000000"),
    Row("b2-scale-million-mismatch", "The answer is 2.5 million.", "2.5", "mismatch", "2500000"),
    Row("b2-float-gold-boxed", "\\boxed{0.3}", "0.30000000000000004", "match", "3/10"),
    Row("b2-float-gold-66", "The answer is 200/3.", "66.66666666666667", "match", "200/3"),
    Row("b2-float-gold-66-rounded", "The answer is 66.67.", "66.66666666666667", "mismatch", "6667/100"),
    Row(
        "b2-note-after-final",
        "Final Answer: 15\n\nNote: The answer would be 20 if we counted Tom too.",
        "15",
        "match",
        "15",
    ),
    Row("b2-ps", "The answer is 9.\n\nP.S. The answer is 10 if you include the dog.", "9", "match", "9"),
    Row(
        "b2-verify-after-final",
        "The final answer is $36$.\n\nLet's check the answer: 36 / 4 = 9 per person.",
        "36",
        "match",
        "36",
    ),
    Row(
        "b2-llama-step",
        "## Step 3: Calculate\n6 × 7 = 42\n\nThe final answer is: $\\boxed{42}$",
        "42",
        "match",
        "42",
    ),
    Row("b2-qwen-boxed-units", "Thus, Betty needs \\(\\boxed{5}\\) more dollars.", "5", "match", "5"),
    Row(
        "b2-words-no-fallback-dozen",
        "She buys 2 packs of 12, 2 × 12 = 24.\nThe answer is two dozen.",
        "24",
        "no_answer",
    ),
    Row("b2-answer-is-words-tens", "The answer is ninety-nine.", "99", "match", "99"),
    Row("b2-digits-and-quarter", "The answer is 3 and a quarter miles.", "3.25", "match", "13/4"),
    Row(
        "b2-answer-for-this-problem",
        "The answer for this problem is 8 hours.\n\nNew problem: a car travels 60 km/h for 3 hours.",
        "8",
        "match",
        "8",
    ),
    Row(
        "b2-negative-words",
        "The temperature dropped below zero. The answer is negative five degrees.",
        "-5",
        "match",
        "-5",
    ),
    Row("b2-hash-then-note", "#### 72\n\nNote: this assumes 6 hours of work.", "72", "match", "72"),
]
COT_ROWS = FIRST_COT_ROWS + LATER_COT_ROWS

PROGRAM_ROWS = [
    Row("program-float-text-gold", "0.30000000000000004", "0.30000000000000004", "match", "3/10"),
    Row("program-float-third", repr(100 / 3), "33.333333333333336", "match"),
    Row("program-float-binary-int", "17.999999999999996", "18", "match", "18"),
    Row("program-float-rounded-gold", repr(0.1 * 3), "0.3", "match", "3/10"),
    Row("program-float-off", "33.33", "33.333333333333336", "mismatch", "3333/100"),
    Row("program-float-gold-2", repr(1.1 * 3), "3.3000000000000003", "match"),
    Row("program-float-13-digits", "0.1234567890123", "0.1234567890123", "match"),
    Row("program-float-not-float-text", "0.1234567890124", "0.1234567890123", "mismatch"),
    Row("b2-prog-2-3", "0.6666666666666666", "0.6666666666666666", "match"),
    Row("b2-prog-66", "66.66666666666667", "66.66666666666667", "match"),
    Row("b2-prog-0.1", "0.7999999999999999", "0.8", "match"),
    Row("b2-prog-int-gold", "12.000000000000002", "12", "match"),
]


def _agrees(row: Row, program: bool) -> bool:
    verdict = (
        judge_program_answer(float(row.response), row.gold) if program else judge_cot(row.response, row.gold)
    )
    if verdict.kind != row.kind:
        return False
    return row.value is None or verdict.value == row.value


def agreement() -> tuple[int, int]:
    """(rows judged as labelled, rows) over the whole held-out set."""
    agreed = sum(_agrees(r, False) for r in COT_ROWS) + sum(_agrees(r, True) for r in PROGRAM_ROWS)
    return agreed, len(COT_ROWS) + len(PROGRAM_ROWS)


@pytest.mark.parametrize("row", COT_ROWS, ids=[r.id for r in COT_ROWS])
def test_cot_row(row: Row) -> None:
    verdict = judge_cot(row.response, row.gold)
    assert (verdict.kind, verdict.value if row.value is not None else None) == (row.kind, row.value), verdict


@pytest.mark.parametrize("row", PROGRAM_ROWS, ids=[r.id for r in PROGRAM_ROWS])
def test_program_row(row: Row) -> None:
    verdict = judge_program_answer(float(row.response), row.gold)
    assert (verdict.kind, verdict.value if row.value is not None else None) == (row.kind, row.value), verdict


def test_labels_are_unique() -> None:
    ids = [r.id for r in (*COT_ROWS, *PROGRAM_ROWS)]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("text", "is_float"),
    [
        ("0.30000000000000004", True),
        ("33.333333333333336", True),
        ("1.0000000000000002e-05", True),
        ("3.333", False),
        ("0.000000000000001", False),  # one significant digit
        ("123456789012345", False),  # an integer is exact
    ],
)
def test_float_text(text: str, is_float: bool) -> None:
    assert is_float_text(text) is is_float


def test_float_gold_tolerance_is_relative_1e9() -> None:
    gold = "33.333333333333336"
    assert judge_cot("The answer is 33.33333334.", gold).kind == "match"  # within 1e-9 relative
    assert judge_cot("The answer is 33.3333334.", gold).kind == "mismatch"  # 2e-9 off
    # A gold written with fewer digits keeps its written precision.
    assert judge_cot("The answer is 33.33333334.", "33.33333333333").kind == "mismatch"
