"""Exact evaluation of plain-arithmetic programs, without running them.

`evaluate_program` accepts only straight-line code: assignments `name = <expression>` whose
expressions use numbers, names assigned earlier, `+ - * / // % **`, unary signs, parentheses and
`round(x)` / `round(x, n)` / `abs(x)`. Everything else (calls, attributes, loops, imports, strings)
makes it return None. It is read with `ast` and computed on `Fraction`s, so `12/60*50` is exactly
10. It exists to check derived programs (the teacher simulator's, the tests') cheaply; model
output is executed only in the sandbox.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from fractions import Fraction

MAX_EXPONENT = 64  # `2 ** 10**9` must not eat the machine
MAX_DIGITS = 200

_BINARY: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: operator.mod,
}


class _NotArithmetic(Exception):
    pass


def _value(node: ast.expr, env: dict[str, Fraction]) -> Fraction:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise _NotArithmetic(f"unknown name {node.id}")
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _value(node.operand, env)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _value(node.left, env), _value(node.right, env)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > MAX_EXPONENT:
                raise _NotArithmetic("exponent not a small integer")
            result = left ** int(right)
        elif type(node.op) in _BINARY:
            if right == 0 and isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod):
                raise _NotArithmetic("division by zero")
            result = _BINARY[type(node.op)](left, right)
        else:
            raise _NotArithmetic("operator")
        if len(str(result.numerator)) > MAX_DIGITS or len(str(result.denominator)) > MAX_DIGITS:
            raise _NotArithmetic("number too large")
        return Fraction(result)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        args = [_value(a, env) for a in node.args]
        if node.func.id == "abs" and len(args) == 1:
            return abs(args[0])
        if node.func.id == "round" and len(args) in (1, 2):
            digits = int(args[1]) if len(args) == 2 else 0
            return Fraction(round(args[0], digits))
    raise _NotArithmetic(type(node).__name__)


def evaluate_program(program: str, result_name: str = "ans") -> Fraction | None:
    """The exact value of `result_name` after running the straight-line arithmetic `program`,
    or None if the program is anything but that (or does not assign `result_name`)."""
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    env: dict[str, Fraction] = {}
    try:
        for stmt in tree.body:
            if not (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
            ):
                return None
            env[stmt.targets[0].id] = _value(stmt.value, env)
    except (_NotArithmetic, ZeroDivisionError, OverflowError, RecursionError, ValueError):
        return None
    return env.get(result_name)


def evaluate_expression(expression: str) -> Fraction | None:
    """The exact value of one plain-arithmetic expression, or None."""
    return evaluate_program(f"_value = ({expression})", "_value") if expression.strip() else None
