"""Reading exact numbers out of free model text (the forgiving counterpart of `numbers.py`).

`clean_answer_text` turns the LaTeX and Markdown a model wraps around an answer into plain text:
`\\frac{a}{b}` and `\\dfrac` become `a/b` (`7\\frac{1}{2}` the mixed number `7 1/2`), `{,}` and
`\\,` between digit groups become `,`, `\\!`, `$`, `\\(`, `\\[`, `**` and `\\left`/`\\right` go,
`\\text{...}` and its kin keep their content, `\\%` is `%`, `\\times`/`\\cdot` are `×`, unicode minus
is `-`, `²`/`³` are `^2`/`^3`, and the text is NFKC-normalised (full-width digits).

Unicode vulgar fractions are fractions (`½` is `1/2`, `2½` and `2 ½` the mixed number `2 1/2`,
never twenty-one halves), and a scale word after a number multiplies it (`1.5 million` is
1,500,000, `$12 thousand` is 12,000; `18 hundred-dollar bills` is 18).

`read_single_number` reads the one number an answer states. It accepts a leading currency sign,
thousands separators only in groups of three (`1,234,567`; `1,23` is malformed, not 123), a
decimal point, `a/b` fractions and mixed numbers, scientific notation (`1.5e3`, `1.5 × 10^3`),
leading zeros, a trailing `%` (kept as written: `50%` is 50) and any words or units after it
(`18 apples`, `12 cm^2`). Around it: the answer's first clause only (`18, since 3 × 6 = 18` is
18), the right-hand side of a last `=` (`3 × 6 = 18`), and parenthesised asides after the number
are ignored. "<expression>, which is N" (also "which equals", "which gives", "that is") is N when
what comes before is an expression (`3/4 of 24, which is 18`, `half of 36, which is 18`); a plain
number keeps its value (`18, which is 3 more than 15` is 18). A span with no digits is read in
words (`number_words`: `eighteen`, `three and a half`, `two point five`); a number word we do not
read (`a dozen`, `several hundred`) makes it unreadable, not empty, so the matcher never falls
back to a number from the reasoning; digits followed by `and a half` are the mixed number.
Several different numbers (`18 or 20`, `2-3`) are ambiguous; an arithmetic
expression is evaluated exactly by `arithmetic.evaluate` (bounded by construction).

Every function here does bounded work: text is cut to `MAX_TEXT_CHARS`, digit runs longer than
`MAX_DIGITS` are replaced by a placeholder before any pattern sees them, and no pattern nests
unbounded quantifiers.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction

from services.validation.arithmetic import evaluate
from services.validation.number_words import spell_out_digits

MAX_TEXT_CHARS = 100_000  # longer text is cut (callers reject it earlier; this is the floor)
MAX_DIGITS = 200  # a digit run longer than this is not a number we read
MAX_EXPONENT = 400  # |e| in 1e<e>: larger is not a number a word problem answers with
LONG_NUMBER = "⟨long number⟩"

_LONG_DIGITS_RE = re.compile(r"\d+")
_TEXT_CMD_RE = re.compile(r"\\(?:text[a-z]{0,4}|math[a-z]{0,4}|mbox|operatorname)\s*\{([^{}]*)\}")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_BRACED_POWER_RE = re.compile(r"\^\s*\{([^{}]*)\}")
_LATEX_THOUSANDS_RE = re.compile(r"(?<=\d)(?:\{,\}|\\,)(?=\d{3}(?!\d))")
_PLAIN_NUMBER_RE = re.compile(r"[-+]?\d+(?:\.\d+)?")
_SPACE_RE = re.compile(r"[ \t\r\f\v]+")
_LATEX_SPACING_RE = re.compile(r"\\[,;:> ]|\\q?quad\b|~")
_DELIMITERS_RE = re.compile(r"\\[()\[\]]|\\left\b|\\right\b|\\displaystyle\b|\*\*|\$")

_CURRENCY = "$€£¥₹¤"
# One number token. Digit runs are at most MAX_DIGITS long (longer ones were replaced), so the
# bounded repetitions keep backtracking small.
_TOKEN_RE = re.compile(
    r"""
    (?<![\w.,/])                                   # not inside a word or another number
    (?P<sign>[-+])?\s?(?:[$€£¥₹¤]\s?)?(?P<sign2>[-+])?
    (?:
        (?P<whole>\d{1,30})\s(?P<mnum>\d{1,30})/(?P<mden>\d{1,30})(?![\d/])    # 7 1/2
      | (?P<fnum>\d{1,30})/(?P<fden>\d{1,30})(?![\d/])                         # 5/2
      | (?P<int>\d{1,3}(?:,\d{3}){1,66}(?!\d)|\d{1,200})(?:\.(?P<dec>\d{1,200}))?  # 1,234.5
      | \.(?P<bare_dec>\d{1,200})                                             # .5
    )
    (?:
        [eE](?P<exp>[-+]?\d{1,4})(?![\d])
      | \s?[×x*]\s?10\s?\^\s?\(?(?P<exp2>[-+]?\d{1,4})\)?
    )?
    (?:\s(?P<scale>hundred|thousand|million|billion|trillion)(?![-\w]))?         # 1.5 million
    (?P<pct>\s?%)?
    """,
    re.VERBOSE | re.IGNORECASE,
)
_SCALES = {"hundred": 2, "thousand": 3, "million": 6, "billion": 9, "trillion": 12}
# Unicode vulgar fractions: NFKC would turn "2½" into "21⁄2" (twenty-one halves).
_VULGAR_RE = re.compile(r"(\d?)\s?([\u00bc-\u00be\u2150-\u215e])")
_WHICH_IS_RE = re.compile(
    r",?\s(?:which|that)\s(?:is\s(?:equal\sto\s)?|equals\s|gives\s|makes\s|comes\sto\s|works\sout\sto\s)",
    re.IGNORECASE,
)
# Words that make the number before a "which is N" part of an expression ("half of 36").
_EXPRESSION_WORDS_RE = re.compile(r"\b(?:of|half|twice|double|triple|thrice|times|percent)\b", re.IGNORECASE)
_WORD_RE = re.compile(r"[^\W\d_]+")
_REASONING_OPENERS = frozenset(
    [
        "let",
        "let's",
        "lets",
        "we",
        "i",
        "to",
        "first",
        "here",
        "this",
        "in",
        "since",
        "because",
        "if",
        "before",
        "step",
        "so",
        "now",
    ]
)
_PAREN_ASIDE_RE = re.compile(r"\([^()]{0,300}\)")
_UNIT_POWER_RE = re.compile(r"(?<=[A-Za-z)])\s?\^\s?\(?-?\d\)?")
_ORDINAL_TAIL_RE = re.compile(r"^(?:st|nd|rd|th)\b")
_CLAUSE_CUT_RE = re.compile(
    r"(?:,\s?|\s)(?:because|since|which|whereas|given\s+that|so\s+that|as\s+(?:he|she|it|they|we|there|each))\b"
    r"|;|\s[–—]\s|\n",
    re.IGNORECASE,
)
_EQUALS_RE = re.compile(r"=|≈|\\approx")
# A number followed or preceded by an operator is part of an expression, not the answer itself.
_OPERATOR_START_RE = re.compile(r"^\s?(?:[\^*/×÷+\-]\s?[(\d.]|[!√π\\])")
_RANGE_RE = re.compile(r"[-+]?\d[\d,.]{0,40}\s?[-–]\s?\d[\d,.]{0,40}\s?[A-Za-z ]{0,40}")
_EXPRESSION_LEAD_RE = re.compile(r"^[^\d(.+\-]{0,200}")
_OPERATOR_END_RE = re.compile(r"[-+*/×÷^]\s?\(?\s?$")


@dataclass(slots=True, frozen=True)
class ReadNumber:
    """An exact number as written. `decimals` is how many digits it gives after the point
    (adjusted by any exponent: `2.5e-1` has 2), 0 for integers, None for `a/b` fractions and
    computed values, which are exact by nature."""

    value: Fraction
    decimals: int | None
    text: str


@dataclass(slots=True, frozen=True)
class ReadFailure:
    """Why no single number could be read: `kind` is `no_answer` or `ambiguous`. `empty` means
    the text held nothing of the kind at all (the matcher then tries the next rung of the ladder);
    a malformed or unreadable number is not empty."""

    kind: str
    reason: str
    empty: bool = False


def clean_answer_text(text: str) -> str:
    """Plain text for an answer written with LaTeX/Markdown (see the module docstring)."""
    s = text[:MAX_TEXT_CHARS]
    s = s.replace("²", "^2").replace("³", "^3").replace("\u2212", "-")
    s = _VULGAR_RE.sub(_vulgar_replacement, s)
    s = unicodedata.normalize("NFKC", s).replace("\u2044", "/")
    s = _LONG_DIGITS_RE.sub(lambda m: m.group() if len(m.group()) <= MAX_DIGITS else LONG_NUMBER, s)
    s = s.replace("\\$", "$").replace("\\%", "%").replace("\\!", "")
    s = _LATEX_THOUSANDS_RE.sub(",", s)
    s = s.replace("{,}", ",")
    for _ in range(2):  # one level of nesting inside \text{} or \frac{}{} is enough for answers
        s = _TEXT_CMD_RE.sub(r" \1 ", s)
        s = _FRAC_RE.sub(_frac_replacement, s)
    s = _FRAC_SHORT_RE.sub(r"\1/\2", s)
    s = _BRACED_POWER_RE.sub(_power_replacement, s)
    s = s.replace("\\times", "×").replace("\\cdot", "×").replace("\\div", "÷").replace("\\approx", "≈")
    s = _LATEX_SPACING_RE.sub(" ", s)
    s = _DELIMITERS_RE.sub("", s)
    s = s.replace("{", "").replace("}", "")
    return _SPACE_RE.sub(" ", s).strip()


def _vulgar_replacement(m: re.Match[str]) -> str:
    whole = m.group(1)
    fraction = unicodedata.normalize("NFKC", m.group(2)).replace("\u2044", "/")
    return f"{whole} {fraction}" if whole else f"{m.group()[:-1]}{fraction}"


def _frac_replacement(m: re.Match[str]) -> str:
    num, den = m.group(1).strip(), m.group(2).strip()
    body = f"{num}/{den}" if _is_plain(num) and _is_plain(den) else f"({num})/({den})"
    # 7\frac{1}{2} is the mixed number 7 1/2; a space keeps the parts apart.
    before = m.string[m.start() - 1] if m.start() > 0 else ""
    return f" {body}" if before.isdigit() else body


def _power_replacement(m: re.Match[str]) -> str:
    inner = m.group(1).strip()
    return f"^{inner}" if _is_plain(inner) else f"^({inner})"


def _is_plain(text: str) -> bool:
    return _PLAIN_NUMBER_RE.fullmatch(text) is not None


def _token_number(m: re.Match[str]) -> ReadNumber | None:
    """The value of a `_TOKEN_RE` match, or None if it is out of bounds."""
    negative = (m.group("sign") == "-") != (m.group("sign2") == "-")
    decimals: int | None
    if m.group("fnum") is not None or m.group("mnum") is not None:
        num = int(m.group("fnum") or m.group("mnum"))
        den = int(m.group("fden") or m.group("mden"))
        if den == 0:
            return None
        value = Fraction(num, den) + int(m.group("whole") or 0)
        decimals = None
    else:
        int_part = m.group("int")
        dec_part = m.group("dec") or m.group("bare_dec") or ""
        value = Fraction(int((int_part or "0").replace(",", "")))
        if dec_part:
            value += Fraction(int(dec_part), 10 ** len(dec_part))
        decimals = len(dec_part)
    exp_text = m.group("exp") or m.group("exp2")
    if exp_text is not None:
        exp = int(exp_text)
        if abs(exp) > MAX_EXPONENT:
            return None
        value *= Fraction(10) ** exp
        decimals = None if decimals is None else max(0, decimals - exp)
    scale = m.group("scale")
    if scale is not None:
        exp = _SCALES[scale.lower()]
        value *= 10**exp
        decimals = None if decimals is None else max(0, decimals - exp)
    return ReadNumber(-value if negative else value, decimals, m.group().strip())


def find_numbers(text: str, limit: int = 1000) -> list[ReadNumber]:
    """Every number token in already-cleaned `text`, in order (at most `limit`)."""
    found: list[ReadNumber] = []
    for m in _TOKEN_RE.finditer(text):
        number = _token_number(m)
        if number is not None:
            found.append(number)
            if len(found) >= limit:
                break
    return found


def first_clause(text: str) -> str:
    """`text` up to the first clause boundary (`, since`, `because`, `;`, ` — `, a new line)."""
    m = _CLAUSE_CUT_RE.search(text)
    return text[: m.start()] if m else text


def read_single_number(span: str) -> ReadNumber | ReadFailure:
    """The one number an answer span states (see the module docstring for what is accepted)."""
    s = clean_answer_text(span)
    which = _WHICH_IS_RE.search(s)
    if which is not None:
        # "3/4 of 24, which is 18": the number after "which is" is the answer when what comes
        # before it is an expression; "18, which is 3 more than 15" keeps 18.
        head, tail = _read_clause(s[: which.start()]), _read_clause(s[which.end() :])
        if isinstance(tail, ReadNumber) and not _plain_number(head, s[: which.start()]):
            return tail
        return head
    return _read_clause(s)


def _read_clause(s: str) -> ReadNumber | ReadFailure:
    s = first_clause(s)
    parts = _EQUALS_RE.split(s)
    if len(parts) > 1:
        tail = parts[-1].strip()
        s = tail or parts[-2]
    s = s.strip()
    if _TOKEN_RE.search(s) is None and LONG_NUMBER not in s:
        return _read_words(s)
    return _read_number_in(spell_out_digits(s, mixed_only=True)[0])


def _read_words(s: str) -> ReadNumber | ReadFailure:
    """The number a span without digits states in words (`number_words`)."""
    spelled, unread = spell_out_digits(s)
    if unread:
        return ReadFailure("no_answer", f"a number in words that is not read: {s[:60]!r}")
    if spelled == s:
        return ReadFailure("no_answer", "no number in the answer", empty=True)
    words = [w.lower() for w in _WORD_RE.findall(s)]
    if words[0] in _REASONING_OPENERS or (
        len(words) > 3
        and words[0] in ("one", "a", "an")
        and spell_out_digits(" ".join(words[1:]))[0] == " ".join(words[1:])
    ):
        # "Answer: let's do it in two steps", "One way to solve this is ...": working, not an
        # answer in words.
        return ReadFailure("no_answer", "no number in the answer", empty=True)
    number = _read_number_in(spelled.strip())
    if isinstance(number, ReadNumber):
        return ReadNumber(number.value, number.decimals, s)
    return number


def _plain_number(reading: ReadNumber | ReadFailure, text: str) -> bool:
    """Whether `reading` of `text` is one number as written (an evaluated expression keeps the
    whole text as its `text`), not an expression such as `half of 36`."""
    if not isinstance(reading, ReadNumber) or _EXPRESSION_WORDS_RE.search(text) is not None:
        return False
    return reading.text != text.strip() or _TOKEN_RE.fullmatch(text.strip()) is not None


def _read_number_in(s: str) -> ReadNumber | ReadFailure:
    if LONG_NUMBER in s:
        return ReadFailure("no_answer", f"a number longer than {MAX_DIGITS} digits")
    m = _TOKEN_RE.search(s)
    if m is None:
        return ReadFailure("no_answer", "no number in the answer", empty=True)
    after = s[m.end() :]
    if after[:1] == "," and after[1:2].isdigit():
        return ReadFailure(
            "no_answer",
            f"malformed number {(m.group().strip() + after[:4])!r}: "
            "thousands separators must group three digits",
        )
    if after[:1] == "." and after[1:2].isdigit():
        return ReadFailure("no_answer", f"malformed number {(m.group().strip() + after[:4])!r}")
    number = _token_number(m)
    if number is None:
        return ReadFailure("no_answer", f"number out of range: {m.group().strip()[:40]!r}")
    if _OPERATOR_START_RE.match(after) or _OPERATOR_END_RE.search(s[: m.start()]):
        if _RANGE_RE.fullmatch(s[m.start() :]):
            return ReadFailure("ambiguous", f"a range, not one number: {s[:60]!r}")
        value = evaluate(_EXPRESSION_LEAD_RE.sub("", s))
        if value is None:
            return ReadFailure("no_answer", f"not a number or plain arithmetic: {s[:60]!r}")
        return ReadNumber(value, None, s)
    rest = _UNIT_POWER_RE.sub("", _PAREN_ASIDE_RE.sub(" ", after))
    rest = _ORDINAL_TAIL_RE.sub("", rest)
    others = find_numbers(rest, limit=10)
    distinct = {number.value} | {o.value for o in others}
    if len(distinct) > 1:
        shown = ", ".join([number.text, *(o.text for o in others)][:5])
        return ReadFailure("ambiguous", f"several numbers in the answer: {shown}")
    return number


def read_number_list(span: str, limit: int = 50) -> list[ReadNumber] | ReadFailure:
    """Every number an answer span states, in order (for golds with several values)."""
    s = clean_answer_text(span)
    if LONG_NUMBER in s:
        return ReadFailure("no_answer", f"a number longer than {MAX_DIGITS} digits")
    s = _UNIT_POWER_RE.sub("", s)
    if _TOKEN_RE.search(s) is None:
        spelled, unread = spell_out_digits(s)
        if unread:
            return ReadFailure("no_answer", f"a number in words that is not read: {s[:60]!r}")
        s = spelled
    numbers = find_numbers(s, limit=limit)
    if not numbers:
        return ReadFailure("no_answer", "no number in the answer", empty=True)
    return numbers


def number_from_value(value: object) -> ReadNumber | None:
    """A program's plain numeric answer as an exact number, or None if it is not numeric.

    Integers and `Fraction`s are exact. A float is read at 12 significant digits: that removes
    binary rounding error (`0.1 * 3` is 0.3, `17.999999999999996` is 18) and nothing more, and
    those digits are its written precision (the matcher also tries `float_repr_number`, the
    float's shortest repr). NaN, infinities and booleans are not numbers.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if value.bit_length() > 4 * MAX_DIGITS:
            return ReadNumber(Fraction(value), 0, f"<integer of {value.bit_length()} bits>")
        return ReadNumber(Fraction(value), 0, str(value))
    if isinstance(value, Fraction):
        too_long = max(value.numerator.bit_length(), value.denominator.bit_length()) > 4 * MAX_DIGITS
        return ReadNumber(value, None, "<fraction too long to show>" if too_long else str(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        text = format(value, ".12g")
        m = _TOKEN_RE.fullmatch(text.replace("e+", "e"))
        number = _token_number(m) if m else None
        if number is None:
            return None
        return ReadNumber(number.value, number.decimals, repr(value))
    return None


def float_repr_number(value: float) -> ReadNumber | None:
    """A float read from its shortest repr (`0.30000000000000004`), with that precision."""
    if not math.isfinite(value):
        return None
    m = _TOKEN_RE.fullmatch(repr(value).replace("e+", "e"))
    return _token_number(m) if m else None


FLOAT_TEXT_DIGITS = 15
_SIGNIFICANT_RE = re.compile(r"[-+]?(\d*)\.(\d+)(?:[eE][-+]?\d+)?")


def is_float_text(text: str) -> bool:
    """Whether `text` is a decimal written with at least `FLOAT_TEXT_DIGITS` significant digits:
    the text of a binary float (`0.30000000000000004`), not a precision anyone chose."""
    m = _SIGNIFICANT_RE.fullmatch(text.strip())
    if m is None:
        return False
    digits = (m.group(1) + m.group(2)).lstrip("0")
    return len(digits) >= FLOAT_TEXT_DIGITS
