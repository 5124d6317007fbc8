"""The one exact arithmetic evaluator: answers in plain notation (`evaluate`) and Python expression
trees (`evaluate_tree`, under the derived-program check in tests/services/kpdd/test_arithmetic.py).

Bombs are only run, never timed: a bound that stops holding shows up as a hung test.
"""

from __future__ import annotations

import ast
from fractions import Fraction

import pytest

from services.validation.arithmetic import MAX_DEPTH, evaluate, evaluate_tree


def _tree(expression: str) -> ast.expr:
    return ast.parse(expression, mode="eval").body


def test_arithmetic_is_exact_and_bounded() -> None:
    assert evaluate("12 × 3") == 36
    assert evaluate("(3+4)/2") == Fraction(7, 2)
    assert evaluate("2^10") == 1024
    assert evaluate("-(1/3)") == Fraction(-1, 3)
    assert evaluate("9^9^9^9") is None  # refused before computing
    assert evaluate("2^0.5") is None
    assert evaluate("1/0") is None
    assert evaluate("18") is None  # a lone number is not an expression
    assert evaluate("x + 1") is None
    assert evaluate("(" * 100 + "1" + ")" * 100) is None


def test_answer_notation_keeps_its_own_grammar() -> None:
    assert evaluate("1,234 ÷ 2") == 617
    assert evaluate("-2^2") == -4 and evaluate("2^3^2") == 512 and evaluate("2^-1") == Fraction(1, 2)
    assert evaluate("0.1 + 0.2") == Fraction(3, 10)
    assert evaluate("0." + "3" * 60 + " * 3") == Fraction("0." + "9" * 60)  # every digit kept
    # Python spellings are not answer notation: each is two operators in a row, refused.
    assert evaluate("2**3") is None and evaluate("7//2") is None
    assert evaluate("2(3)") is None and evaluate("()") is None and evaluate("7 % 2") is None


def test_trees_take_bound_names_and_the_program_operators() -> None:
    names = {"rate": Fraction(1, 5)}
    assert evaluate_tree(_tree("rate * 50 + 7 // 2 - 7 % 2"), names) == 12
    assert evaluate_tree(_tree("round(10 / 3, 2) + abs(-1)")) == Fraction(433, 100)
    assert evaluate_tree(_tree("rate + other"), names) is None  # unknown name


@pytest.mark.parametrize(
    "expression",
    [
        "9 ** 9 ** 9 ** 9",
        "(2 ** 64) ** 64",  # each exponent allowed, the result too large: refused before computing
        "round(1, 10 ** 50)",  # rounding to 10**50 digits would build 10**(10**50)
        "round(1, 0.5)",
        "1e999 - 1e999",  # infinity is not a number here
        "10 ** 1000",
        "-" * (MAX_DEPTH + 1) + "1",
        "True + 1",
        "'1' * 3",
        "(1).real",
        "max(1, 2)",
        "round(x=1)",
        "[1][0]",
        "1 if 1 else 2",
        "1 < 2",
    ],
)
def test_trees_outside_the_bounds_are_refused(expression: str) -> None:
    assert evaluate_tree(_tree(expression)) is None


def test_long_flat_sums_are_not_depth_bombs() -> None:
    assert evaluate_tree(_tree(" + ".join(["1"] * (MAX_DEPTH - 1)))) == MAX_DEPTH - 1
