"""Non-numeric answers: ratios, clock times, yes/no, ordinals and free text.

Policy (ASDiv has all of these; the gold decides which reading applies to the response):

- **Colon values** (`2:3`, `11:30`, `9:03:36`, no a.m./p.m.): a ratio or a clock reading. The
  response's first `a:b[:c]` (spaces around the colon allowed, or `a to b`) matches when every
  part is the same integer (`09:30` = `9:30`). Not reduced or scaled: `4:6` is not `2:3` (the
  problem asked for that form), and a fraction `2/3` is not the ratio `2:3`.
- **Clock times with a.m./p.m.** (`3:30 p.m.`, `9:03:36 a.m.`): compared as a time of day.
  `3:30 pm`, `3:30 P.M.` and the 24-hour `15:30` match; a bare `3:30` does not (it could be a.m.),
  nor does `3:30 a.m.`.
- **Yes/no**: the response's first word decides; `true`/`false` are synonyms. `Yes, she can` is
  yes.
- **Ordinals** (`6th`, `1st`): the response's ordinal or bare number (`6th`, `6`, `sixth`).
- **Free text** (names, places, `They are equal`): both sides go through
  `normalise_answer_text` (NFKC, lower case, curly quotes straightened, Markdown and LaTeX
  `\\text{}` removed, a leading `the`/`a`/`an` and a leading `it is`/`they are` dropped, trailing
  punctuation dropped, ordinal suffixes removed from numbers: `February 3rd` = `February 3`).
  They match when equal, or when the response starts with the gold and goes on with an
  explanation after a comma or a verb (`John, because...`, `John has more`). `Red and Blue` does
  not match `Red`: an answer naming more than the gold is not the gold.
- **Several values** (`36; 12`, `9; 11; 13`): the response's numbers, in order, must be exactly
  the gold's (same count, each matched like a single number). Parts that are not numbers compare
  as free text, in order, split on `;`, `,` and `and`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from services.validation.reading import clean_answer_text

_SPACE_RE = re.compile(r"\s+")
_LEADING_FILLER_RE = re.compile(
    r"^(?:(?:it\s+is|it's|they\s+are|they're|he\s+is|she\s+is|that\s+is)\s+)?(?:(?:the|a|an)\s+)?"
)
_TRAILING_PUNCT_RE = re.compile(r"[\s.!?,;:]+$")
_ORDINAL_SUFFIX_RE = re.compile(r"\b(\d{1,9})(?:st|nd|rd|th)\b")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "`": "'"})
_EXPLANATION_START_RE = re.compile(
    r"^(?:[,;:(\-–—]|\s(?:is|are|was|were|has|have|had|will|would|can|could|does|did|because|since|"
    r"with|wins|won|got|gets|needs|needed|sold|bought|made|ate)\b)"
)
_COLON_RE = re.compile(r"(?<![\d:])(\d{1,9})\s?:\s?(\d{1,9})(?:\s?:\s?(\d{1,9}))?(?![\d:])")
_TO_RATIO_RE = re.compile(r"(?<![\d.])(\d{1,9})\s+to\s+(\d{1,9})(?![\d.])", re.IGNORECASE)
_CLOCK_RE = re.compile(
    r"(?<![\d:])(\d{1,2})\s?:\s?(\d{2})(?:\s?:\s?(\d{2}))?(?![\d:])\s?(?:(a|p)\.?\s?m\b\.?)?",
    re.IGNORECASE,
)
_ORDINAL_RE = re.compile(r"(?<![\d.,])(\d{1,9})(?:\s?(?:st|nd|rd|th)\b|(?![\d.,/]))", re.IGNORECASE)
_ORDINAL_WORDS = {
    word: i
    for i, word in enumerate(
        (
            "first",
            "second",
            "third",
            "fourth",
            "fifth",
            "sixth",
            "seventh",
            "eighth",
            "ninth",
            "tenth",
            "eleventh",
            "twelfth",
            "thirteenth",
            "fourteenth",
            "fifteenth",
            "sixteenth",
            "seventeenth",
            "eighteenth",
            "nineteenth",
            "twentieth",
        ),
        start=1,
    )
}
YES_WORDS = frozenset({"yes", "true"})
NO_WORDS = frozenset({"no", "false"})


def normalise_answer_text(text: str) -> str:
    """The comparable form of a free-text answer (see the module docstring)."""
    s = clean_answer_text(text)
    s = unicodedata.normalize("NFKC", s).translate(_QUOTES).lower()
    s = s.replace("*", "").replace('"', "").replace("_", " ")
    s = _SPACE_RE.sub(" ", s).strip().strip("'").strip()
    s = _TRAILING_PUNCT_RE.sub("", s)
    s = _LEADING_FILLER_RE.sub("", s, count=1)
    s = _ORDINAL_SUFFIX_RE.sub(r"\1", s)
    return _TRAILING_PUNCT_RE.sub("", s).strip()


def text_matches(response_span: str, gold_text: str) -> bool:
    """Whether a free-text answer states the gold (both are normalised here)."""
    said, gold = normalise_answer_text(response_span), normalise_answer_text(gold_text)
    if not gold:
        return False
    if said == gold:
        return True
    return said.startswith(gold) and _EXPLANATION_START_RE.match(said[len(gold) :]) is not None


def read_colon(span: str) -> tuple[int, ...] | None:
    """The first `a:b[:c]` (or `a to b`) in a span, as integers."""
    s = clean_answer_text(span)
    m = _COLON_RE.search(s)
    if m is not None:
        return tuple(int(g) for g in m.groups() if g is not None)
    m = _TO_RATIO_RE.search(s)
    if m is not None:
        return int(m.group(1)), int(m.group(2))
    return None


@dataclass(slots=True, frozen=True)
class ClockTime:
    """A time of day as seconds since midnight, and whether a.m./p.m. fixed it (a 24-hour
    reading past 12 or at 0 fixes it too)."""

    seconds: int
    definite: bool


def read_clock(span: str) -> ClockTime | None:
    """The first clock time in a span (`3:30 p.m.`, `15:30`, `9:03:36 a.m.`)."""
    m = _CLOCK_RE.search(clean_answer_text(span))
    if m is None:
        return None
    hour, minute = int(m.group(1)), int(m.group(2))
    second = int(m.group(3) or 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    meridiem = (m.group(4) or "").lower()
    if meridiem:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if meridiem == "p" else 0)
        definite = True
    else:
        definite = hour > 12 or hour == 0
    return ClockTime(hour * 3600 + minute * 60 + second, definite)


def clock_key(clock: ClockTime) -> str:
    """`3:30 p.m.` style text for a definite time of day (what `parse_gold` reads as a clock)."""
    hours, rest = divmod(clock.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    meridiem = "a.m." if hours < 12 else "p.m."
    shown = hours % 12 or 12
    text = f"{shown}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")
    return f"{text} {meridiem}"


def read_boolean(span: str) -> bool | None:
    """True for yes/true, False for no/false, by the span's first word; None otherwise."""
    words = normalise_answer_text(span).split()
    if not words:
        return None
    first = words[0].strip(",.;:!")
    if first in YES_WORDS:
        return True
    if first in NO_WORDS:
        return False
    return None


def read_ordinal(span: str) -> int | None:
    """The first ordinal or bare integer in a span (`6th`, `6`), else the first ordinal word
    (`sixth`, up to twentieth)."""
    s = clean_answer_text(span)
    m = _ORDINAL_RE.search(s)
    if m is not None:
        return int(m.group(1))
    for word in re.findall(r"[a-z]{3,12}", s.lower()):
        if word in _ORDINAL_WORDS:
            return _ORDINAL_WORDS[word]
    return None


def split_parts(span: str) -> list[str]:
    """A free-text answer with several values, split on `;`, `,` and `and`."""
    s = clean_answer_text(span)
    return [p.strip() for p in re.split(r";|,|\band\b", s) if p.strip()]
