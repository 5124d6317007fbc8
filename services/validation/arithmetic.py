"""Exact, bounded arithmetic on `Fraction`s, never `exec`: the one evaluator behind answer matching
(an answer `12 × 3`) and the check of derived programs (`services.kpdd.arithmetic`).

`evaluate_tree` computes a Python expression tree (as `ast.parse` builds it) made of numbers,
names bound in `names`, `+ - * / // % **`, unary signs, `abs(x)`, `round(x)` and `round(x, n)`.
Anything else (other names and calls, attributes, strings, booleans, comparisons) is refused with
None. The work is bounded by construction rather than by a deadline: a tree deeper than
`MAX_DEPTH` is refused, exponents and `round`'s digits must be integers up to `MAX_EXPONENT`, a
power whose result would pass `MAX_BITS` bits is refused before it is computed, and so is any
value whose numerator or denominator passes `MAX_BITS` bits. So `9^9^9^9` or `2 ** 10**9` ends at
once with None.

`evaluate` reads a plain arithmetic *answer* such as `12 × 3`, `(3+4)/2` or `2^10`: numbers
(`1,234`, `2.5`), `+ - * / × ÷ ^`, unary signs and parentheses, at most `MAX_TOKENS` tokens.
Nothing else (no names, functions, roots or pi): those return None and the answer counts as not a
plain number. Its tokens are checked here, then laid out as a Python expression (`×` is `*`, `^` is
`**`, each number a name bound to its exact value) for `evaluate_tree`.

Why not a computer-algebra fallback (math-verify, sympy)? Gold answers of the word-problem corpora
are numbers, ratios, times and short text; a full LaTeX parser adds a dependency and a process with
a kill deadline for cases those corpora do not have.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from fractions import Fraction

MAX_TOKENS = 64
MAX_DEPTH = 100  # nodes from the root of a tree to its deepest leaf; far below Python's stack limit
MAX_EXPONENT = 64
MAX_BITS = 2048

_TOKEN_RE = re.compile(
    r"\s*(?:(\d{1,3}(?:,\d{3}){1,20}(?![\d,])|\d{1,60}(?:\.\d{1,60})?|\.\d{1,60})|([-+*/×÷^()]))"
)
_OPERATORS = frozenset("+-*/×÷^")
_AS_PYTHON = {"×": "*", "÷": "/", "^": "**"}

_BINARY: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: operator.mod,
}


class _Refused(Exception):
    """The expression is not plain arithmetic or leaves the bounds."""


def evaluate(expression: str) -> Fraction | None:
    """The exact value of a plain arithmetic expression, or None (not arithmetic, out of bounds,
    division by zero). A lone number is not an expression: it needs at least one operator."""
    tokens = _tokenise(expression)
    if tokens is None or not any(isinstance(t, str) and t in _OPERATORS for t in tokens):
        return None
    numbers: dict[str, Fraction] = {}
    words: list[str] = []
    for token in tokens:
        if isinstance(token, Fraction):
            name = f"n{len(numbers)}"
            numbers[name] = token
            words.append(name)
        else:
            words.append(_AS_PYTHON.get(token, token))
    try:
        # Tokens are spaced apart, so `2**3` or `2//3` in the answer stay two operators (refused).
        tree = ast.parse(" ".join(words), mode="eval")
    except SyntaxError:
        return None
    return evaluate_tree(tree.body, numbers)


def evaluate_tree(node: ast.expr, names: Mapping[str, Fraction] | None = None) -> Fraction | None:
    """The exact value of the expression tree `node`, whose names are looked up in `names`; None
    if it is anything but bounded plain arithmetic (see the module docstring) or divides by zero."""
    try:
        return _value(node, names or {}, 0)
    except (_Refused, ZeroDivisionError):
        return None


def _tokenise(expression: str) -> list[Fraction | str] | None:
    text = expression.strip()
    if not text or len(text) > 400:
        return None
    tokens: list[Fraction | str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            if text[pos:].strip() == "":
                break
            return None
        pos = m.end()
        if m.group(1) is not None:
            tokens.append(Fraction(m.group(1).replace(",", "")))
        else:
            tokens.append(m.group(2))
        if len(tokens) > MAX_TOKENS:
            return None
    return tokens


def _value(node: ast.expr, names: Mapping[str, Fraction], depth: int) -> Fraction:
    if depth > MAX_DEPTH:
        raise _Refused("nested too deeply")
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        if isinstance(node.value, float):
            if not math.isfinite(node.value):
                raise _Refused("not a finite number")
            return _checked(Fraction(str(node.value)))  # `0.1` is one tenth, not the nearest float
        return _checked(Fraction(node.value))
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise _Refused(f"unknown name {node.id}")
        return _checked(names[node.id])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _value(node.operand, names, depth + 1)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left = _value(node.left, names, depth + 1)
        right = _value(node.right, names, depth + 1)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        if type(node.op) not in _BINARY:
            raise _Refused(f"operator {type(node.op).__name__}")
        return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        args = [_value(arg, names, depth + 1) for arg in node.args]
        if node.func.id == "abs" and len(args) == 1:
            return abs(args[0])
        if node.func.id == "round" and len(args) in (1, 2):
            digits = _small_integer(args[1]) if len(args) == 2 else 0
            return _checked(Fraction(round(args[0], digits)))
    raise _Refused(type(node).__name__)


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    power = _small_integer(exponent)
    if base == 0 and power < 0:
        raise ZeroDivisionError
    # Bound the result before computing it: bits(base^e) <= |e| * bits(base).
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if bits * abs(power) > MAX_BITS:
        raise _Refused("power too large")
    return _checked(base**power)


def _small_integer(value: Fraction) -> int:
    if value.denominator != 1 or abs(value) > MAX_EXPONENT:
        raise _Refused("not an integer up to MAX_EXPONENT")
    return int(value)


def _checked(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise _Refused("number too large")
    return value


__all__ = ["MAX_BITS", "MAX_DEPTH", "MAX_EXPONENT", "MAX_TOKENS", "evaluate", "evaluate_tree"]
