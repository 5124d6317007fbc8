"""The exact check of derived programs without running them (its expression evaluator, shared with
answer matching, is tested in tests/services/validation/test_arithmetic.py)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from services.kpdd.arithmetic import evaluate_expression, evaluate_program


def test_straight_line_programs_are_exact() -> None:
    assert evaluate_program("rate = 12 / 60\nans = rate * 50\n") == 10
    assert evaluate_program("a = 0.1\nb = 0.2\nans = a + b") == Fraction(3, 10)
    assert evaluate_program("x = 7 // 2\ny = 7 % 2\nans = x * 10 + y - -1") == 32
    assert evaluate_program("ans = round(10 / 3, 2)") == Fraction(333, 100)
    assert evaluate_program("ans = abs(-2) ** 3") == 8
    assert evaluate_expression("(34.0 - 27.0)") == 7


@pytest.mark.parametrize(
    "program",
    [
        "import os\nans = 1",
        "ans = __import__('os').getpid()",
        "ans = open('/etc/passwd')",
        "ans = 'text'",
        "ans = x + 1",  # unknown name
        "ans = 2 ** 100000",  # exponent bomb
        "ans = 10 ** 64 ** 2",
        "ans = round(1, 10 ** 50)",  # rounding bomb
        "ans = 1 / 0",
        "for i in range(3):\n    ans = i",
        "def f():\n    return 1\nans = f()",
        "ans = [1, 2][0]",
        "ans = (1).real",
        "ans = True + 1",
        "ans = (",
        "x = 1",  # never assigns ans
        "ans = 1\x00",
    ],
)
def test_anything_but_arithmetic_is_refused(program: str) -> None:
    assert evaluate_program(program) is None


def test_expression_cannot_smuggle_statements() -> None:
    assert evaluate_expression("1); import os; (1") is None
    assert evaluate_expression("") is None
