"""Turn the object a program produced into a plain, exact `{"type", "value"}` record.

Runs inside the forked child only (the object may be hostile). Dispatch is on the exact type and
its method resolution order, never on `isinstance` (which a `__class__` property can fool), and
values of known numeric types are read through the base type's own methods, so a subclass that
lies in `__str__`, `__repr__` or `__eq__` still yields its real value. Only for "anything else"
is the program's own `__str__` called, and then only here, under the child's wall-clock deadline.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from fractions import Fraction
from typing import Any


class AnswerTooLarge(Exception):
    """An integer answer has more digits than `max_answer_digits`."""


def _int_text(value: int, max_digits: int) -> str:
    # bit_length bounds the digit count without the quadratic int->str conversion.
    if value.bit_length() > max_digits * 3.33 + 4:
        raise AnswerTooLarge(f"an integer of about {int(value.bit_length() / 3.3219)} digits")
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        text = int.__repr__(value)
    finally:
        sys.set_int_max_str_digits(old)
    if len(text.lstrip("-")) > max_digits:
        raise AnswerTooLarge(f"an integer of {len(text.lstrip('-'))} digits")
    return text


def _fraction_text(numerator: int, denominator: int, max_digits: int) -> tuple[str, str]:
    if type(numerator) is not int or type(denominator) is not int or denominator == 0:
        raise TypeError("not an exact rational")
    exact = Fraction(numerator, denominator)  # normalises sign and lowest terms
    num = _int_text(exact.numerator, max_digits)
    if exact.denominator == 1:
        return "fraction", num
    return "fraction", f"{num}/{_int_text(exact.denominator, max_digits)}"


def _text(value: Any, max_chars: int) -> dict[str, Any]:
    text = value if type(value) is str else str.__str__(str(value))
    truncated = len(text) > max_chars
    return {"type": "text", "value": text[:max_chars], "truncated": truncated}


def _numpy_plain(value: Any) -> Any:
    """A Python scalar for a numpy scalar or 0-d array; the value itself otherwise."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return value
    mro = type(value).__mro__
    if numpy.generic in mro:
        if numpy.bool_ in mro:
            return bool(numpy.generic.item(value))
        if numpy.integer in mro:
            return int(numpy.generic.item(value))
        if numpy.floating in mro:
            return float(numpy.generic.item(value))
        return value
    if numpy.ndarray in mro and numpy.ndarray.ndim.__get__(value) == 0:
        return _numpy_plain(numpy.ndarray.item(value))
    return value


def _sympy_plain(value: Any) -> Any:
    """An int, Fraction, float or bool for sympy's exact numbers; the value itself otherwise."""
    sympy = sys.modules.get("sympy")
    if sympy is None:
        return value
    mro = type(value).__mro__
    try:
        if sympy.Integer in mro:
            return int(value.p)
        if sympy.Rational in mro:
            return Fraction(int(value.p), int(value.q))
        if sympy.Float in mro:
            return float(value)
        if sympy.logic.boolalg.BooleanTrue in mro:
            return True
        if sympy.logic.boolalg.BooleanFalse in mro:
            return False
    except AttributeError:
        return value
    return value


def convert_answer(value: Any, *, max_chars: int, max_digits: int) -> dict[str, Any]:
    """The answer record for `value` (see `results.Answer` for the types and their text)."""
    value = _sympy_plain(_numpy_plain(value))
    mro = type(value).__mro__
    if bool in mro:
        return {"type": "bool", "value": "True" if int.__index__(value) else "False"}
    if int in mro:
        return {"type": "int", "value": _int_text(int.__index__(value), max_digits)}
    if Fraction in mro:
        kind, text = _fraction_text(
            Fraction.numerator.fget(value),  # type: ignore[attr-defined]
            Fraction.denominator.fget(value),  # type: ignore[attr-defined]
            max_digits,
        )
        return {"type": kind, "value": text}
    if Decimal in mro:
        text = Decimal.__str__(value)
        return {"type": "decimal", "value": text[:max_chars], "truncated": len(text) > max_chars}
    if float in mro:
        return {"type": "float", "value": float.__repr__(value)}
    if value is None:
        return {"type": "none", "value": ""}
    if str in mro:
        return _text(str.__str__(value), max_chars)
    return _text(value, max_chars)
