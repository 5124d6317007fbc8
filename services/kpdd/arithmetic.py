"""Exact evaluation of plain-arithmetic programs, without running them.

`evaluate_program` accepts only straight-line code: assignments `name = <expression>`, each
expression computed by `services.validation.arithmetic.evaluate_tree` (numbers, names assigned
earlier, `+ - * / // % **`, unary signs, parentheses, `round(x)` / `round(x, n)` / `abs(x)`, on
`Fraction`s and within its bounds, so `12/60*50` is exactly 10). Everything else (other calls,
attributes, loops, imports, strings) makes it return None. It exists to check derived programs
(the teacher simulator's, the tests') cheaply; model output is executed only in the sandbox.
"""

from __future__ import annotations

import ast
from fractions import Fraction

from services.validation.arithmetic import evaluate_tree


def evaluate_program(program: str, result_name: str = "ans") -> Fraction | None:
    """The exact value of `result_name` after running the straight-line arithmetic `program`,
    or None if the program is anything but that (or does not assign `result_name`)."""
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    names: dict[str, Fraction] = {}
    for stmt in tree.body:
        if not (
            isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
        ):
            return None
        value = evaluate_tree(stmt.value, names)
        if value is None:
            return None
        names[stmt.targets[0].id] = value
    return names.get(result_name)


def evaluate_expression(expression: str) -> Fraction | None:
    """The exact value of one plain-arithmetic expression (Python syntax), or None."""
    if not expression.strip():
        return None
    try:
        tree = ast.parse(f"({expression})", mode="eval")  # one expression: no statement fits
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return evaluate_tree(tree.body)


__all__ = ["evaluate_expression", "evaluate_program"]
