"""Exact, bounded evaluation of a plain arithmetic answer such as `12 × 3` or `(3+4)/2`.

This is the only "symbolic" step the matcher takes, and it is deliberately small: numbers
(`1,234`, `2.5`), `+ - * / × ÷ ^`, unary signs and parentheses, evaluated on `Fraction`s. Nothing
else (no names, functions, roots or pi): those return None and the answer counts as not a plain
number. The work is bounded by construction rather than by a deadline: at most `MAX_TOKENS`
tokens, `MAX_DEPTH` nesting, integer exponents up to `MAX_EXPONENT`, and any intermediate value
whose numerator or denominator passes `MAX_BITS` bits is refused, so `9^9^9^9` or a tower of
exponents finishes at once with None.

Why not a computer-algebra fallback (math-verify, sympy)? Gold answers of the word-problem corpora
are numbers, ratios, times and short text; a full LaTeX parser adds a dependency and a process with
a kill deadline for cases those corpora do not have.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_TOKENS = 64
MAX_DEPTH = 16
MAX_EXPONENT = 64
MAX_BITS = 2048

_TOKEN_RE = re.compile(
    r"\s*(?:(\d{1,3}(?:,\d{3}){1,20}(?![\d,])|\d{1,60}(?:\.\d{1,60})?|\.\d{1,60})|([-+*/×÷^()]))"
)


class _Refused(Exception):
    """The expression is not plain arithmetic or leaves the bounds."""


def evaluate(expression: str) -> Fraction | None:
    """The exact value of a plain arithmetic expression, or None (not arithmetic, out of bounds,
    division by zero). A lone number is not an expression: it needs at least one operator."""
    tokens = _tokenise(expression)
    if tokens is None or not any(t in "+-*/×÷^" for t in tokens if isinstance(t, str)):
        return None
    parser = _Parser(tokens)
    try:
        value = parser.expression(0)
        if parser.pos != len(tokens):
            return None
    except (_Refused, ZeroDivisionError, IndexError):
        return None
    return value


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


class _Parser:
    """Recursive descent: expression := term (('+'|'-') term)*, term := factor (('*'|'/') factor)*,
    factor := ('+'|'-') factor | power, power := atom ('^' factor)?, atom := number | '(' expr ')'."""

    def __init__(self, tokens: list[Fraction | str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> Fraction | str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Fraction | str:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expression(self, depth: int) -> Fraction:
        if depth > MAX_DEPTH:
            raise _Refused
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            value = _checked(value + rhs if op == "+" else value - rhs)
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/", "×", "÷"):
            op = self.take()
            rhs = self.factor(depth)
            value = _checked(value * rhs if op in ("*", "×") else value / rhs)
        return value

    def factor(self, depth: int) -> Fraction:
        if self.peek() in ("+", "-"):
            if depth > MAX_DEPTH:
                raise _Refused
            sign = self.take()
            value = self.factor(depth + 1)
            return -value if sign == "-" else value
        return self.power(depth)

    def power(self, depth: int) -> Fraction:
        base = self.atom(depth)
        if self.peek() != "^":
            return base
        self.take()
        if depth > MAX_DEPTH:
            raise _Refused
        exponent = self.factor(depth + 1)
        if exponent.denominator != 1 or abs(exponent) > MAX_EXPONENT:
            raise _Refused
        if base == 0 and exponent < 0:
            raise ZeroDivisionError
        # Bound the result before computing it: bits(base^e) <= |e| * bits(base).
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if bits * abs(int(exponent)) > MAX_BITS:
            raise _Refused
        return _checked(base ** int(exponent))

    def atom(self, depth: int) -> Fraction:
        token = self.take()
        if isinstance(token, Fraction):
            return _checked(token)
        if token == "(":
            value = self.expression(depth + 1)
            if self.take() != ")":
                raise _Refused
            return value
        raise _Refused


def _checked(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise _Refused
    return value
