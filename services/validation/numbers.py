"""Exact number parsing and gold-answer normalisation.

Numbers are exact `Fraction`s, never floats: `"0.1"` is 1/10, `"1,234"` is 1234. The canonical
text of a number is `format_fraction`: an integer as digits (`"18"`), anything else as
`"numerator/denominator"` in lowest terms (`"-5/2"`). That text is what the database stores in
`problems.gold_normalised`, so two golds are equal exactly when their texts are.

`parse_number` is deliberately strict (a whole string must be one number, optionally with a
leading currency sign, thousands separators in groups of three, a trailing percent sign or
scientific exponent). Extraction from free model text is a separate, more forgiving step.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction

MAX_NUMBER_CHARS = 200  # longer strings are not numbers we accept (bounded work on hostile input)

_NUMBER_RE = re.compile(
    r"""
    (?P<sign>[-+])?
    [$€£¥]?
    (?:
        (?P<frac_num>\d{1,30})\s*/\s*(?P<frac_den>\d{1,30})        # 5/2
      | (?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?:\.(?P<dec>\d+))?        # 1,234.50 or .5
        (?:[eE](?P<exp>[-+]?\d{1,3}))?                              # 1e6
    )
    (?P<pct>\s*%)?
    """,
    re.VERBOSE,
)
# A parenthesised unit: "(apples)", "(years old)". Only groups holding a letter, so an
# expression such as "-(1/3)" is not mistaken for one.
_UNIT_RE = re.compile(r"\s*\([^()]*[^\W\d_][^()]*\)")
_SPACE_RE = re.compile(r"\s+")
_SIGNED_GROUP_RE = re.compile(r"([-+]?)\s*\(([^()]*)\)")


def parse_number(text: str) -> Fraction | None:
    """The exact value of `text` if the whole string is one number, else None.

    A trailing `%` is kept as written (`"50%"` is 50, not 1/2): the gold and the prediction are
    compared as written, with no x100 leniency.
    """
    s = text.strip().replace("\u2212", "-").replace("\u2009", "").replace("\u00a0", "")
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    m = _NUMBER_RE.fullmatch(s)
    if m is None:
        return None
    sign = -1 if m.group("sign") == "-" else 1
    if m.group("frac_num") is not None:
        den = int(m.group("frac_den"))
        if den == 0:
            return None
        return sign * Fraction(int(m.group("frac_num")), den)
    int_part, dec_part = m.group("int"), m.group("dec")
    if int_part is None and dec_part is None:
        return None
    value = Fraction(int((int_part or "0").replace(",", "")))
    if dec_part:
        value += Fraction(int(dec_part), 10 ** len(dec_part))
    if m.group("exp"):
        value *= Fraction(10) ** int(m.group("exp"))
    return sign * value


def format_fraction(value: Fraction) -> str:
    """Canonical text of an exact number: `"18"`, `"-5/2"`."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def normalise_text(text: str) -> str:
    """Case-, width- and whitespace-insensitive form of a textual answer.

    NFKC, lower case, whitespace collapsed, a trailing full stop dropped. Nothing else: words,
    punctuation inside the answer and ordering are kept (`"3:30 p.m."` stays distinguishable
    from `"3:30"`).
    """
    s = unicodedata.normalize("NFKC", text).lower()
    s = _SPACE_RE.sub(" ", s).strip()
    return s.rstrip(".").strip()


@dataclass(slots=True, frozen=True)
class NormalisedGold:
    kind: str  # "number" | "text" | "none"
    value: str | None


def normalise_gold(raw: str | None) -> NormalisedGold:
    """Normalise a gold answer as a corpus gives it.

    Policy (documented in the README):
    - Parenthesised units (a group with a letter) are dropped: `"9 (apples)"` -> number 9;
      `"-(1/3)"` is not a unit: it is the number -1/3 (a signed, parenthesised number).
    - One number -> kind `number`, canonical fraction text.
    - Several values separated by `;` (ASDiv: `"36 (years old); 12 (years old)"`) -> kind `text`,
      each part normalised (numbers canonical) and joined with `"; "`: `"36; 12"`.
    - Anything else (names, yes/no, times like `"3:30 p.m."`, ratios like `"2:3"`) -> kind
      `text`, `normalise_text`. A ratio stays text: `"2:3"` is not the number 2/3.
    - Missing or blank -> kind `none` (an unlabelled problem).
    """
    if raw is None or not raw.strip():
        return NormalisedGold("none", None)
    stripped = _UNIT_RE.sub("", raw).strip() or raw.strip()
    if ";" in stripped:
        parts = [p.strip() for p in stripped.split(";") if p.strip()]
        norm = []
        for part in parts:
            number = parse_number(part)
            norm.append(format_fraction(number) if number is not None else normalise_text(part))
        return NormalisedGold("text", "; ".join(norm))
    number = parse_number(stripped)
    grouped = _SIGNED_GROUP_RE.fullmatch(stripped)
    if number is None and grouped is not None:
        inner = parse_number(grouped.group(2))
        if inner is not None:
            number = -inner if grouped.group(1) == "-" else inner
    if number is not None:
        return NormalisedGold("number", format_fraction(number))
    return NormalisedGold("text", normalise_text(stripped))
