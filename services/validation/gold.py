"""`Gold`: a gold answer read once into the shape the matcher compares against.

`parse_gold(raw)` takes the gold as the corpus wrote it (`problems.gold_answer`, or a consensus
pseudo-gold) and decides its shape:

- `number`: one number, read strictly (`numbers.parse_number`) after dropping parenthesised units
  (`9 (apples)`); `-(1/3)` is -1/3. Its `decimals` record the precision it was written with:
  `2.50` has 2, `65.0` is an integer (exact equality), `5/2` is exact (None).
- `numbers`: several values separated by `;`, all numbers (`36 (years old); 12 (years old)`).
- `clock`: a time of day with a.m./p.m. (`3:30 p.m.`, `9:03:36 a.m.`).
- `colon`: `a:b` or `a:b:c` without a.m./p.m. (a ratio `2:3` or a clock reading `11:30`).
- `boolean`: yes/no/true/false. `ordinal`: `6th`, `1st`.
- `texts`: several values, not all numbers. `text`: anything else (names, `They are equal`).
- `none`: missing or blank: an unlabelled problem (its pseudo-gold comes from consensus).

`canonical` is the gold's comparable text, as shown in verdicts. For `number` and `numbers` it is
the same text `normalise_gold` stores in `problems.gold_normalised`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.validation.numbers import format_fraction, parse_number
from services.validation.reading import ReadNumber
from services.validation.text_answers import (
    NO_WORDS,
    YES_WORDS,
    ClockTime,
    clock_key,
    normalise_answer_text,
    read_clock,
    read_colon,
)

GOLD_SHAPES = ("number", "numbers", "clock", "colon", "boolean", "ordinal", "texts", "text", "none")
MAX_GOLD_CHARS = 1000

_UNIT_PAREN_RE = re.compile(r"\s*\([^()]{0,200}[A-Za-z][^()]{0,200}\)")
_SIGNED_PAREN_RE = re.compile(r"([-+]?)\s*\(\s*([^()]{1,200})\s*\)")
_DECIMALS_RE = re.compile(r"\.(\d+)")
_EXPONENT_RE = re.compile(r"[eE]([-+]?\d+)")
_CLOCK_GOLD_RE = re.compile(r"\d{1,2}\s?:\s?\d{2}(?:\s?:\s?\d{2})?\s?[ap]\.?\s?m\.?", re.IGNORECASE)
_COLON_GOLD_RE = re.compile(r"\d{1,9}\s?:\s?\d{1,9}(?:\s?:\s?\d{1,9})?")
_ORDINAL_GOLD_RE = re.compile(r"(\d{1,9})(?:st|nd|rd|th)", re.IGNORECASE)


@dataclass(slots=True, frozen=True)
class Gold:
    """A gold answer in comparable form; which fields are set depends on `shape`."""

    shape: str
    raw: str | None
    canonical: str | None
    numbers: tuple[ReadNumber, ...] = ()
    parts: tuple[int, ...] = ()
    clock: ClockTime | None = None
    boolean: bool | None = None
    texts: tuple[str, ...] = ()

    @property
    def number(self) -> ReadNumber:
        """The value of a `number` gold (the first value of any numeric gold)."""
        return self.numbers[0]


NO_GOLD = Gold("none", None, None)


def parse_gold(raw: str | None) -> Gold:
    """The gold answer `raw` in comparable form (see the module docstring)."""
    if raw is None or not raw.strip():
        return NO_GOLD
    if len(raw) > MAX_GOLD_CHARS:
        raw = raw[:MAX_GOLD_CHARS]
    text = _UNIT_PAREN_RE.sub("", raw).strip() or raw.strip()
    if ";" in text:
        parts = [p.strip() for p in text.split(";") if p.strip()]
        numbers = [read_written_number(p) for p in parts]
        if parts and all(n is not None for n in numbers):
            values = tuple(n for n in numbers if n is not None)
            return Gold("numbers", raw, "; ".join(format_fraction(n.value) for n in values), values)
        texts = tuple(normalise_answer_text(p) for p in parts)
        return Gold("texts", raw, "; ".join(texts), texts=texts)
    number = read_written_number(text)
    if number is not None:
        return Gold("number", raw, format_fraction(number.value), (number,))
    if _CLOCK_GOLD_RE.fullmatch(text):
        clock = read_clock(text)
        if clock is not None:
            return Gold("clock", raw, clock_key(clock), clock=clock)
    if _COLON_GOLD_RE.fullmatch(text):
        parts_ = read_colon(text)
        if parts_ is not None:
            return Gold("colon", raw, ":".join(map(str, parts_)), parts=parts_)
    normalised = normalise_answer_text(text)
    if normalised in YES_WORDS or normalised in NO_WORDS:
        value = normalised in YES_WORDS
        return Gold("boolean", raw, "yes" if value else "no", boolean=value)
    m = _ORDINAL_GOLD_RE.fullmatch(text)
    if m is not None:
        return Gold("ordinal", raw, m.group(1), parts=(int(m.group(1)),))
    return Gold("text", raw, normalised, texts=(normalised,))


def read_written_number(text: str) -> ReadNumber | None:
    """A gold number read strictly, with the precision it was written with; None if `text` is
    not exactly one number. A whole number in parentheses with a sign (`-(1/3)`) counts."""
    s = text.strip()
    m = _SIGNED_PAREN_RE.fullmatch(s)
    if m is not None:
        inner = read_written_number(m.group(2))
        if inner is None:
            return None
        signed = -inner.value if m.group(1) == "-" else inner.value
        return ReadNumber(signed, inner.decimals, s)
    value = parse_number(s)
    if value is None:
        return None
    return ReadNumber(value, _written_decimals(s), s)


def _written_decimals(s: str) -> int | None:
    if "/" in s:
        return None
    m = _DECIMALS_RE.search(s)
    decimals = len(m.group(1)) if m else 0
    e = _EXPONENT_RE.search(s)
    if e is not None:
        decimals = max(0, decimals - int(e.group(1)))
    return decimals
