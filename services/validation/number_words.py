"""Numbers written in words, read into digits: `three and a half` is `7/2`.

`spell_out_digits(text)` returns `text` with every number it can read in words replaced by its
digits, and whether a number word was left unread. What is read (case-insensitive, words joined
by spaces or hyphens):

- cardinals into the trillions: `zero` ... `nineteen`, the tens, `hundred`, `thousand`,
  `million`, `billion`, `trillion`, with an optional `and` after a hundred or a scale word
  (`one hundred and five`) and `a` for one before `hundred` or a scale word (`a million`);
  `negative`/`minus` before one;
- `point` and digit words after a cardinal: `two point five` is `2.5`;
- fractions: a cardinal or `a` before a denominator word (`half`/`halves`, `third(s)`,
  `quarter(s)`, `fourth(s)` ... `tenth(s)`): `three quarters` is `3/4`, `a third` is `1/3`,
  `twenty-one halves` is `21/2`;
- `and a half` (any `and <fraction>`) after a cardinal or after digits: `three and a half` and
  `2 and a half` are `7/2` and `2 1/2`.

A quantity named otherwise (`a dozen`, `two dozen`, `score`, `several hundred`, `thousands`) is
not read and is reported as left unread: the caller then says the answer could not be read rather
than guess. Only `UNREAD_WORDS` and a leftover `hundred` or scale word count; ordinary words, and
a bare `half` or `third` (`half of 36`), do not.
Work is linear in the number of words, and the text is bounded by the caller.
"""

from __future__ import annotations

import re
from fractions import Fraction

_SMALL = {
    word: i
    for i, word in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        ]
    )
}
_TENS = {
    word: 10 * i
    for i, word in enumerate(
        ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], 2
    )
}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_DENOMINATORS = {
    "half": 2,
    "halves": 2,
    "third": 3,
    "thirds": 3,
    "quarter": 4,
    "quarters": 4,
    "fourth": 4,
    "fourths": 4,
    "fifth": 5,
    "fifths": 5,
    "sixth": 6,
    "sixths": 6,
    "seventh": 7,
    "sevenths": 7,
    "eighth": 8,
    "eighths": 8,
    "ninth": 9,
    "ninths": 9,
    "tenth": 10,
    "tenths": 10,
}
UNREAD_WORDS = frozenset({"dozen", "dozens", "score", "hundreds", "thousands", "millions", "billions"})
_WORD_RE = re.compile(r"[A-Za-z]+")
_GAP_RE = re.compile(r"[ \t]{1,3}|[ \t]?-[ \t]?")
_DIGITS_AND_RE = re.compile(r"(?<![\d.,/])(\d{1,30})\s+and\s+$")


class _Words:
    """The words of a text with their offsets, and whether two neighbours are joined."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.matches = list(_WORD_RE.finditer(text))
        self.words = [m.group().lower() for m in self.matches]

    def joined(self, i: int) -> bool:
        """Whether word i and word i + 1 are separated by spaces or a hyphen only."""
        if i + 1 >= len(self.matches):
            return False
        gap = self.text[self.matches[i].end() : self.matches[i + 1].start()]
        return _GAP_RE.fullmatch(gap) is not None

    def at(self, i: int) -> str:
        return self.words[i] if i < len(self.words) else ""


def _cardinal(w: _Words, i: int) -> tuple[int, int] | None:
    """The cardinal starting at word i: (value, index after it), or None."""
    total = current = 0
    seen = False
    last = ""  # the kind of the previous word: small, tens, hundred, scale
    j = i
    while j < len(w.words):
        word = w.words[j]
        if j > i and not w.joined(j - 1):
            break
        if word == "a" and j == i and w.joined(j) and w.at(j + 1) in ("hundred", *_SCALES):
            current, last = 1, "small"  # "a hundred", "a million"
        elif word in _SMALL and last != "small" and not (last == "tens" and _SMALL[word] >= 10):
            current += _SMALL[word]
            last, seen = "small", True
        elif word in _TENS and last not in ("small", "tens"):
            current += _TENS[word]
            last, seen = "tens", True
        elif word == "hundred" and last in ("small", "tens"):
            total, current = total + (current - current % 100), (current % 100) * 100
            last, seen = "hundred", True
        elif word in _SCALES and last in ("small", "tens", "hundred"):
            total += current * _SCALES[word]
            current = 0
            last, seen = "scale", True
        elif (
            word == "and"
            and last in ("hundred", "scale")
            and (w.at(j + 1) in _SMALL or w.at(j + 1) in _TENS)
            and w.at(j + 2) not in _DENOMINATORS
        ):
            last = "and"
        else:
            break
        j += 1
    if not seen:
        return None
    if last == "and":
        j -= 1
    return total + current, j


def _fraction_after(w: _Words, j: int) -> tuple[Fraction, int] | None:
    """`a half`, `one third`, `three quarters` starting at word j: (value, index after it)."""
    word = w.at(j)
    if word in ("a", "one") and w.joined(j) and w.at(j + 1) in _DENOMINATORS:
        return Fraction(1, _DENOMINATORS[w.at(j + 1)]), j + 2
    cardinal = _cardinal(w, j)
    if cardinal is not None:
        value, k = cardinal
        if w.joined(k - 1) and w.at(k) in _DENOMINATORS:
            return Fraction(value, _DENOMINATORS[w.at(k)]), k + 1
    return None


def _number_at(w: _Words, i: int) -> tuple[str, int] | None:
    """The number in words starting at word i, as digit text, and the index after it."""
    negative = w.at(i) in ("negative", "minus") and w.joined(i)
    start = i + 1 if negative else i
    sign = "-" if negative else ""
    fraction = _fraction_after(w, start)
    if fraction is not None:
        return sign + _fraction_text(fraction[0]), fraction[1]
    cardinal = _cardinal(w, start)
    if cardinal is None:
        return None
    value, j = cardinal
    if w.at(j) == "point" and w.joined(j - 1) and w.joined(j):
        digits = ""
        k = j + 1
        while w.at(k) in _SMALL and _SMALL[w.at(k)] < 10:
            digits += str(_SMALL[w.at(k)])
            if not w.joined(k):
                k += 1
                break
            k += 1
        if digits:
            return f"{sign}{value}.{digits}", k
    if w.at(j) == "and" and w.joined(j - 1) and w.joined(j):
        part = _fraction_after(w, j + 1)
        if part is not None and part[0] < 1:
            return sign + _fraction_text(value + part[0]), part[1]
    return f"{sign}{value}", j


def _fraction_text(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def spell_out_digits(text: str, *, mixed_only: bool = False) -> tuple[str, bool]:
    """`text` with the numbers written in words replaced by digits (see the module docstring),
    and whether a number word was left that could not be read. With `mixed_only`, only digits
    followed by `and <fraction>` (`2 and a half`) are replaced."""
    w = _Words(text)
    out: list[str] = []
    pos = 0
    unread = False
    i = 0
    while i < len(w.words):
        found = None if mixed_only else _number_at(w, i)
        if found is None and w.words[i] == "and":
            # "2 and a half": digits before the `and`.
            window_start = max(pos, w.matches[i].start() - 40)  # bounded look-back
            before = _DIGITS_AND_RE.search(text[window_start : w.matches[i].end()] + " ")
            part = _fraction_after(w, i + 1) if w.joined(i) else None
            if before is not None and part is not None and part[0] < 1:
                whole_start = window_start + before.start()
                out.append(text[pos:whole_start])
                out.append(_fraction_text(int(before.group(1)) + part[0]))
                pos = w.matches[part[1] - 1].end()
                i = part[1]
                continue
        if found is None:
            unread = unread or w.words[i] in UNREAD_WORDS or w.words[i] in ("hundred", *_SCALES)
            i += 1
            continue
        digits, end = found
        out.append(text[pos : w.matches[i].start()])
        out.append(digits)
        pos = w.matches[end - 1].end()
        if w.at(end) in UNREAD_WORDS and w.joined(end - 1):
            unread = True  # "a dozen", "two dozen": not read
        i = end
    out.append(text[pos:])
    return "".join(out), unread
