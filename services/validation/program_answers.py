"""A Program-of-Thought answer as one plain value the matcher understands.

Programs run only in the sandbox (`services.validation.sandbox`), which reports the answer as an
`Answer(type, value, truncated)` record of text: `int`, `fraction` (`"p/q"`), `decimal`
(`str(Decimal)`), `float` (`repr`), `bool`, `none` or `text` (`str()` of anything else: a list
comes back as `"[36, 12]"`). `plain_program_value` turns that record, a dict of the same shape
(from a JSON file), or an already-plain Python value into one of:

- `None` (no answer), `bool`, `int`, `Fraction`, `float`, `str` (decimals stay text so the
  matcher sees the precision they were written with), a `list` of those (from a plain list or
  tuple), or `Unsupported` with the reason.

Nothing here executes program code; the sandbox already turned the program's object into text.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Union

MAX_INT_DIGITS = 4300  # Python's default int/str conversion limit; the sandbox's default too
MAX_LIST_ITEMS = 50


@dataclass(slots=True, frozen=True)
class Unsupported:
    """A program answer the matcher cannot compare, and why."""

    reason: str


ProgramValue = Union[None, bool, int, Fraction, float, str, list["ProgramValue"], Unsupported]  # noqa: UP007


def plain_program_value(answer: object) -> ProgramValue:
    """The plain value of a program's answer (see the module docstring)."""
    record = _record_fields(answer)
    if record is not None:
        return _from_record(*record)
    if answer is None or isinstance(answer, bool | int | Fraction | float | str):
        return answer
    if isinstance(answer, Decimal):
        return str(answer)
    if isinstance(answer, list | tuple):
        if len(answer) > MAX_LIST_ITEMS:
            return Unsupported(f"a list of {len(answer)} values")
        return [plain_program_value(item) for item in answer]
    return Unsupported(f"an answer of type {type(answer).__name__}")


def _record_fields(answer: object) -> tuple[str, str] | None:
    """(type, value) of a sandbox `Answer` or a dict shaped like one."""
    if isinstance(answer, dict):
        kind, value = answer.get("type"), answer.get("value")
    else:
        kind, value = getattr(answer, "type", None), getattr(answer, "value", None)
        if not hasattr(answer, "truncated"):
            return None
    if isinstance(kind, str) and isinstance(value, str):
        return kind, value
    return None


def _from_record(kind: str, value: str) -> ProgramValue:
    try:
        if kind == "int":
            if len(value.lstrip("-")) > MAX_INT_DIGITS:
                return Unsupported(f"an integer of {len(value.lstrip('-'))} digits")
            return int(value)
        if kind == "fraction":
            if len(value) > 2 * MAX_INT_DIGITS + 2:
                return Unsupported("a fraction too long to read")
            return Fraction(value)
        if kind == "float":
            return float(value)
    except (ValueError, ZeroDivisionError):
        return Unsupported(f"a malformed {kind} answer {value[:40]!r}")
    if kind == "bool":
        return value == "True"
    if kind == "none":
        return None
    if kind in ("decimal", "text"):
        return value
    return Unsupported(f"an answer record of unknown type {kind!r}")
