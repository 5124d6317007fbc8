"""Finding the final answer in Chain-of-Thought text: a ladder of markers.

First any continuation in which the model starts a new problem is cut off (`cut_continuation`):
a chat end token (`<|im_end|>`, `</s>`, `<|endoftext|>`, ...) anywhere, or a line opening with
`Question:`, `Q:`, `**Question 2:**`, `Problem:`, `Human:`, `User:`, `Instruction:`, ... once an
answer has been given before it (a model may restate the question before solving it). A trailing
note (`Note:`, `*Note:`, `(Note:`, `Remark:`, `P.S.`) is cut the same way once an answer holding a
digit has been given: "the answer would be 36 if ..." in a note never overrides the answer. Then,
in order:

1. `boxed`: `\\boxed{...}` / `\\fbox{...}` (braces balanced). Every box is a candidate; the matcher
   calls several boxes with different values ambiguous.
2. `hashes`: the text after the last `####` on its line.
3. `answer_is`: the last "the answer is ...", "final answer: ...", "answer = ...", "the answers
   are ...", to the end of its sentence (an empty one takes the next non-empty line). A qualifier
   may stand between "answer" and the verb: "the answer (in arabic numerals) is", "the answer,
   in dollars, is", "the answer to the question is". A statement saying "final answer" beats any
   plain one, wherever it stands ("The final answer is 18. To verify the answer: 18 / 2 = 9"), and
   an `Answer:` heading the response whose text is a step of working (`Answer: 16 - 3 - 4 = 9
   eggs`, more working after it) is not an answer statement.
4. `answer_line`: the last non-empty line when it is nothing but an answer (`18`, `$18.00`,
   `**18 apples**`, `= 18`).
5. `last_number`: the last number in the text, with confidence `low`. `candidates` then holds the
   last few numbers (a gold with several values takes as many as it has).

`extract_final_answer` returns the first rung that finds something; `extract_ladder` every rung
that does, best first (the matcher goes down it when a rung's text holds no answer at all, as in
"Answer: let's think step by step"). Within a rung the last occurrence wins: a model that
corrects itself says the right answer last. Rungs 1-4 have confidence `high`.

Bounds: only the first `MAX_RESPONSE_CHARS` characters are read (the matcher refuses longer
responses outright), spans are cut to `MAX_SPAN_CHARS` (a longer box is not read), at most
`MAX_BOXES` boxes and `MAX_CONTINUATION_MARKERS` continuation markers are looked at, the last
number is looked for near the last digit only, and no pattern nests unbounded quantifiers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from services.validation.reading import clean_answer_text, find_numbers
from services.validation.verdict import HIGH, LOW

MAX_RESPONSE_CHARS = 100_000
MAX_SPAN_CHARS = 500
MAX_BOXES = 50
LAST_NUMBERS_KEPT = 10
MAX_CONTINUATION_MARKERS = 20

MARKERS = ("boxed", "hashes", "answer_is", "answer_line", "last_number")

_CONTINUATION_RE = re.compile(
    r"^[ \t>#*_(]{0,8}(?:Q|Question|Problem|Human|User|Instruction|Exercise|New\s+(?:problem|question)|"
    r"Next\s+question|(?P<note>Notes?|Remark|Caveat|P\.?\s?S\.?))(?:[ \t]{0,3}\d{1,4})?[ \t]{0,3}"
    r"(?:\*\*)?:(?:\*\*|_)?(?:[ \t]|$)"
    r"|^[ \t>#*_(]{0,8}(?P<postscript>P\.[ \t]?S\.)[ \t]"
    r"|<\|(?:endoftext|im_end|im_start|eot_id|end_of_text|user|end)\|>|</s>|\[INST\]",
    re.MULTILINE | re.IGNORECASE,
)
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s{0,3}\{")
_HASHES_RE = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS_RE = re.compile(
    r"\b(?:(?P<final>final\s+(?:numerical\s+|numeric\s+)?answer)|answers?)"
    # A qualifier: "answer (in arabic numerals) is", "answer, in dollars, is", "answer to the
    # question is".
    r"(?:\s{0,3}\([^()\n]{1,80}\)|,[^,\n]{1,60},|\s(?:to|for)\s(?:the|this|that|our|your|each)"
    r"(?:\s(?:original|given|above|whole|word|math))?\s(?:question|problem|task|exercise|puzzle))?"
    r"(?:\s{0,3}\*{0,2}\s{0,3})"
    r"(?:(?:is|are|was|were|would\s+be|will\s+be|should\s+be|equals)\b|[:=])[ \t:*]{0,6}",
    re.IGNORECASE,
)
# A line that is only an answer: a number, optionally with a unit of up to three words.
_ANSWER_LINE_RE = re.compile(
    r"[=:\s]{0,4}[-+]?[$€£¥₹¤]?\s?\d[\d,./]{0,60}\s?%?(?:\s?[A-Za-z][A-Za-z'-]{0,20}){0,3}\s?[.!]?"
)
_DIGIT_RE = re.compile(r"\d")
_HEADER_PREFIX_CHARS = " \t\n*#>_"
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)")
_ABBREVIATIONS = ("mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "no", "approx", "a.m", "p.m")


@dataclass(slots=True)
class Extraction:
    """Where the final answer of a response is and how sure we are.

    `text` is the answer span as written (None when nothing was found, `marker` then `none`);
    `candidates` every span the winning rung found, in order (`text` is the last);
    `cut_at` the offset where a continuation was cut off, if any.
    """

    text: str | None
    marker: str
    confidence: str
    candidates: list[str] = field(default_factory=list)
    cut_at: int | None = None


def cut_continuation(text: str) -> tuple[str, int | None]:
    """`text` without any continuation in which the model starts a new problem, and where the
    cut was made (None if there was none).

    A chat end token (`<|im_end|>`, `</s>`, ...) always ends the response. A line opening a new
    problem (`Question:`, `Q:`, `Human:`, ...) ends it only once an answer has been given before
    it: a model may restate the question before solving it, and cutting there would lose the
    solution.
    """
    for count, m in enumerate(_CONTINUATION_RE.finditer(text)):
        if count >= MAX_CONTINUATION_MARKERS:
            break
        prefix = text[: m.start()]
        if not prefix.strip():
            continue
        if m.group().startswith(("<", "[")) or _has_marked_answer(
            prefix, strict=m.group("note") is not None or m.group("postscript") is not None
        ):
            return prefix, m.start()
    return text, None


def extract_ladder(text: str) -> list[Extraction]:
    """Every rung of the ladder that finds an answer in `text`, best first (empty if none).

    The matcher takes the first rung whose answer it can read and goes down the ladder only when
    a rung's span holds no answer at all ("Answer: let's think step by step").
    """
    body, cut_at = cut_continuation(text[:MAX_RESPONSE_CHARS])
    found: list[Extraction] = []
    for marker, finder in _FINDERS:
        spans = [s for s in finder(body) if s.strip()]
        if spans:
            found.append(Extraction(spans[-1], marker, HIGH, spans, cut_at))
    last = _last_numbers(body)
    if last:
        found.append(Extraction(last[-1], "last_number", LOW, last, cut_at))
    return found


def extract_final_answer(text: str) -> Extraction:
    """The final answer span of a Chain-of-Thought response: the first rung of the ladder that
    finds one (see the module docstring), or `text=None`, marker `none`."""
    ladder = extract_ladder(text)
    if ladder:
        return ladder[0]
    return Extraction(None, "none", LOW, [], cut_continuation(text[:MAX_RESPONSE_CHARS])[1])


def _has_marked_answer(prefix: str, *, strict: bool = False) -> bool:
    """Whether `prefix` gives a marked answer; `strict` (before a note) asks for one that holds
    a digit, so a note inside the reasoning of "Answer: let's see" cuts nothing."""
    if strict:
        return any(any(_DIGIT_RE.search(s) for s in finder(prefix)) for _, finder in _FINDERS)
    return any(any(s.strip() for s in finder(prefix)) for _, finder in _FINDERS)


def _last_numbers(body: str) -> list[str]:
    """The texts of the last few numbers in `body`, read from a window around its last digit."""
    last_digit = max(body.rfind(d) for d in "0123456789")
    if last_digit < 0:
        return []
    window = body[max(0, last_digit - 4 * MAX_SPAN_CHARS) : last_digit + MAX_SPAN_CHARS]
    numbers = find_numbers(clean_answer_text(window), limit=10_000)
    return [n.text for n in numbers[-LAST_NUMBERS_KEPT:]]


def _boxed(body: str) -> list[str]:
    spans: list[str] = []
    for m in _BOX_RE.finditer(body):
        depth, pos, end = 1, m.end(), min(len(body), m.end() + MAX_SPAN_CHARS)
        while pos < end and depth:
            ch = body[pos]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            pos += 1
        if depth == 0:
            spans.append(body[m.end() : pos - 1].strip())
        if len(spans) >= MAX_BOXES:
            break
    return spans


def _hashes(body: str) -> list[str]:
    return [_sentence(m.group(1)) for m in _HASHES_RE.finditer(body)]


def _answer_is(body: str) -> list[str]:
    """Answer statements, in order, those that say "final answer" after the others (a final
    answer beats a later "to verify the answer: ..."). An `Answer:` heading the response whose
    text is a step of working (`Answer: 16 - 3 - 4 = 9 eggs`, more working after it) is not an
    answer statement."""
    spans: list[str] = []
    finals: list[str] = []
    for m in _ANSWER_IS_RE.finditer(body):
        line_end = body.find("\n", m.end())
        rest = body[m.end() : line_end if line_end >= 0 else len(body)]
        if not rest.strip() and line_end >= 0:
            # "The answer is:\n\n18": the answer is on the next non-empty line.
            following = body[line_end : line_end + MAX_SPAN_CHARS].strip().split("\n", 1)
            rest = following[0] if following else ""
        span = _sentence(rest)
        heading = not body[: m.start()].strip(_HEADER_PREFIX_CHARS)
        if (
            heading
            and not m.group("final")
            and "=" in span
            and line_end >= 0
            and _DIGIT_RE.search(body, line_end) is not None
        ):
            continue
        (finals if m.group("final") else spans).append(span)
    return spans + finals


def _answer_line(body: str) -> list[str]:
    lines = [line for line in body[-4 * MAX_SPAN_CHARS :].splitlines() if line.strip()]
    if not lines:
        return []
    last = lines[-1].strip()
    if len(last) > MAX_SPAN_CHARS:
        return []
    cleaned = clean_answer_text(last)
    return [last] if _ANSWER_LINE_RE.fullmatch(cleaned) else []


_FINDERS: tuple[tuple[str, Callable[[str], list[str]]], ...] = (
    ("boxed", _boxed),
    ("hashes", _hashes),
    ("answer_is", _answer_is),
    ("answer_line", _answer_line),
)


def _sentence(text: str) -> str:
    """The first sentence of `text` (a full stop after an abbreviation or inside `2.5` is not an
    end), bounded to MAX_SPAN_CHARS."""
    text = text[:MAX_SPAN_CHARS].strip()
    for m in _SENTENCE_END_RE.finditer(text):
        word = text[: m.start()].rsplit(None, 1)[-1].lower() if text[: m.start()].strip() else ""
        if word.lstrip("(*") in _ABBREVIATIONS:
            continue
        return text[: m.start()].strip()
    return text
