"""Exact answer matching: `judge_cot` for Chain-of-Thought text, `judge_program_answer` and
`judge_execution` for Program-of-Thought answers, against a gold or a consensus pseudo-gold.

Number policy (the gold decides):
- An integer gold needs exact equality: `18`, `18.0`, `$18`, `18 apples`, `1.8e1` match 18;
  `18.4` does not, nor does `1800%` or `0.18` (no x100 or /100 leniency).
- A non-integer gold written as a decimal is matched to the precision it was written with: the
  answer must lie within half a unit of the gold's last digit, bounds included (`3.333` accepts
  `10/3` and `3.3333`, not `3.33`; `2.5` accepts `2.54`). Method `precision`.
- A non-integer gold written as a fraction (`7/9`) is exact: the same value in any form (`14/18`,
  `\\frac{7}{9}`), or a decimal of at least two places that is the gold correctly rounded to the
  places it gives (`0.78`, `0.778`; not `0.8`). Method `rounded`.
- A gold written as a binary float's text (a decimal with at least 15 significant digits:
  `0.30000000000000004`, `33.333333333333336`, from data sets built with float arithmetic) also
  accepts any answer within a relative `FLOAT_GOLD_TOLERANCE` (1e-9) of it: its last digits are
  rounding noise, not a precision anyone chose. Method `float_gold`.
- No other relative tolerance: a large number is equal or it is not.

Non-numeric golds follow `text_answers` (ratios, clock times, yes/no, ordinals, names, several
values). The answer comes from the `answers` ladder; a rung whose span holds no readable answer
for this gold is passed over for the next (recorded in `details.skipped`). Several `\\boxed{}` with
different values are `ambiguous`, never a match; so is a span stating several numbers (`18 or
20`). An answer found only by the last-number fallback is judged with `confidence: low`.

Program answers go through the same comparison: the sandbox's `Answer` record or a plain value
(`program_answers.plain_program_value`). A float is read at 12 significant digits (so `0.1*3` is
0.3) and, when that does not match a number gold, by its shortest repr (so a program answering
exactly the gold's text `0.1234567890123` matches); an integer or fraction exactly; a string is
read like the text after a CoT marker.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from services.validation.answers import (
    MAX_RESPONSE_CHARS,
    Extraction,
    cut_continuation,
    extract_ladder,
)
from services.validation.consensus import Consensus
from services.validation.gold import Gold, parse_gold
from services.validation.numbers import format_fraction
from services.validation.program_answers import Unsupported, plain_program_value
from services.validation.reading import (
    ReadFailure,
    ReadNumber,
    float_repr_number,
    is_float_text,
    number_from_value,
    read_number_list,
    read_single_number,
)
from services.validation.text_answers import (
    ClockTime,
    clock_key,
    normalise_answer_text,
    read_boolean,
    read_clock,
    read_colon,
    read_ordinal,
    split_parts,
    text_matches,
)
from services.validation.verdict import (
    AMBIGUOUS,
    EXECUTION_KINDS,
    HIGH,
    LOW,
    MATCH,
    MISMATCH,
    NO_ANSWER,
    NO_CONSENSUS,
    NO_GOLD,
    TOO_LONG,
    Verdict,
    failed,
)

GoldSpec = str | Gold | Consensus | None
# A gold written as a binary float's text (`0.30000000000000004`, `33.333333333333336`) is
# compared within this relative tolerance, not at its written precision.
FLOAT_GOLD_TOLERANCE = Fraction(1, 10**9)
MAX_PROGRAM_TEXT_CHARS = 10_000
_LINE_FALLBACK_SHAPES = ("text", "texts", "boolean", "clock", "colon")


@dataclass(slots=True)
class _Reading:
    """An answer read for one gold shape: its canonical text and whether it matches."""

    value: str
    matched: bool
    method: str


def compare_numbers(said: ReadNumber, gold: ReadNumber) -> str | None:
    """How `said` matches the gold number (`exact`, `float_gold`, `precision`, `rounded`), or
    None."""
    if said.value == gold.value:
        return "exact"
    if gold.value.denominator == 1:
        return None
    if is_float_text(gold.text) and abs(said.value - gold.value) <= FLOAT_GOLD_TOLERANCE * abs(gold.value):
        return "float_gold"
    if gold.decimals is not None:
        if abs(said.value - gold.value) * 2 * 10**gold.decimals <= 1:
            return "precision"
        return None
    if (
        said.decimals is not None
        and said.decimals >= 2
        and (abs(said.value - gold.value) * 2 * 10**said.decimals <= 1)
    ):
        return "rounded"
    return None


def judge_cot(response: str, gold: GoldSpec) -> Verdict:
    """The verdict on a Chain-of-Thought response against `gold` (raw gold text, a parsed
    `Gold`, or a `Consensus`). Never raises for any text; a non-str response is a TypeError."""
    if not isinstance(response, str):
        raise TypeError(f"response must be str, got {type(response).__name__}")
    resolved, consensus = _resolve(gold)
    if len(response) > MAX_RESPONSE_CHARS:
        return failed(TOO_LONG, f"response of {len(response)} characters exceeds {MAX_RESPONSE_CHARS}")
    ladder = extract_ladder(response)
    if consensus is not None and not consensus.accepted:
        return _shows(_no_consensus(consensus), ladder[0] if ladder else None)
    if resolved.shape == "none":
        return _shows(_no_gold(), ladder[0] if ladder else None)
    verdict = _judge_ladder(response, ladder, resolved)
    return _with_consensus(verdict, consensus)


def judge_answer_text(span: str, gold: GoldSpec, *, marker: str = "given", confidence: str = HIGH) -> Verdict:
    """The verdict on an answer already extracted (or written by another tool) against `gold`."""
    resolved, consensus = _resolve(gold)
    extraction = Extraction(span, marker, confidence, [span])
    if consensus is not None and not consensus.accepted:
        return _shows(_no_consensus(consensus), extraction)
    if resolved.shape == "none":
        return _shows(_no_gold(), extraction)
    verdict = _judge_span(span[:MAX_PROGRAM_TEXT_CHARS], resolved, marker, confidence)
    return _with_consensus(verdict, consensus)


def judge_program_answer(answer: object, gold: GoldSpec) -> Verdict:
    """The verdict on a program's computed answer (the sandbox's `Answer` record, a dict of the
    same shape, or a plain value) against `gold`. The program itself never runs here."""
    resolved, consensus = _resolve(gold)
    value = plain_program_value(answer)
    if consensus is not None and not consensus.accepted:
        verdict = _no_consensus(consensus)
        verdict.extracted, verdict.marker = _shown(value), "program"
        return verdict
    flag = answer.get("truncated") if isinstance(answer, dict) else getattr(answer, "truncated", False)
    verdict = _judge_value(value, resolved)
    if flag is True:
        verdict.details["truncated"] = True  # the sandbox cut a long text answer
    return _with_consensus(verdict, consensus)


def judge_execution(result: Any, gold: GoldSpec) -> Verdict:
    """The verdict on a sandbox `ExecutionResult`: its failure kind passed through (`error`,
    `timeout`, `memory`, `output_cap`, `signal`, `no_answer`), or its answer judged."""
    kind = getattr(result.kind, "value", result.kind)
    if kind == "ok":
        verdict = judge_program_answer(result.answer, gold)
        verdict.details.setdefault("duration_s", getattr(result, "duration_s", None))
        return verdict
    details: dict[str, Any] = {"execution": kind}
    if getattr(result, "error_type", None):
        details["error_type"] = result.error_type
    reason = getattr(result, "error_message", None) or f"the program ended with {kind}"
    verdict_kind = kind if kind in EXECUTION_KINDS else NO_ANSWER
    verdict = failed(verdict_kind, reason, **details)
    verdict.marker = "program"
    return verdict


# --- gold resolution -------------------------------------------------------------------------


def _resolve(gold: GoldSpec) -> tuple[Gold, Consensus | None]:
    if isinstance(gold, Consensus):
        return parse_gold(gold.pseudo_gold), gold
    if isinstance(gold, Gold):
        return gold, None
    if gold is None or isinstance(gold, str):
        return parse_gold(gold), None
    raise TypeError(f"gold must be str, Gold, Consensus or None, got {type(gold).__name__}")


def _no_consensus(consensus: Consensus) -> Verdict:
    verdict = failed(NO_CONSENSUS, consensus.reason or "no consensus", **consensus.to_details())
    verdict.method = "consensus"
    return verdict


def _no_gold() -> Verdict:
    return failed(NO_GOLD, "no gold answer (and no consensus to judge by)")


def _shows(verdict: Verdict, extraction: Extraction | None) -> Verdict:
    """`verdict` with the answer that was found, for verdicts that could not compare it."""
    if extraction is not None:
        verdict.extracted, verdict.marker = extraction.text, extraction.marker
        verdict.confidence = extraction.confidence
    return verdict


def _with_consensus(verdict: Verdict, consensus: Consensus | None) -> Verdict:
    if consensus is None:
        return verdict
    verdict.details["compared_by"] = verdict.method
    verdict.details.update(consensus.to_details())
    verdict.method = "consensus"
    return verdict


# --- Chain-of-Thought ------------------------------------------------------------------------


def _judge_ladder(response: str, ladder: list[Extraction], gold: Gold) -> Verdict:
    if gold.shape in _LINE_FALLBACK_SHAPES:
        # A name, yes/no, time or ratio: the last line, not the last number, is the low-confidence
        # guess.
        cut_at = ladder[0].cut_at if ladder else cut_continuation(response)[1]
        ladder = [e for e in ladder if e.marker != "last_number"]
        last_line = _last_line(response, cut_at)
        if last_line is not None:
            ladder.append(Extraction(last_line, "last_line", LOW, [last_line]))
    if not ladder:
        return failed(NO_ANSWER, "no answer marker and no number in the response", gold=gold.canonical)
    skipped: list[str] = []
    verdict: Verdict | None = None
    for extraction in ladder:
        span = _span_for(extraction, gold)
        if span is None:
            continue
        if extraction.marker == "boxed" and len(extraction.candidates) > 1:
            ambiguous = _boxes_disagree(extraction.candidates, gold)
            if ambiguous is not None:
                verdict = ambiguous
                break
        reading = _read(span, gold)
        if isinstance(reading, ReadFailure) and reading.empty and extraction.confidence == HIGH:
            skipped.append(f"{extraction.marker}: {reading.reason}")
            continue
        verdict = _verdict(span, reading, gold, extraction.marker, extraction.confidence)
        break
    if verdict is None:
        verdict = failed(NO_ANSWER, "no answer in the response", gold=gold.canonical)
    if skipped:
        verdict.details["skipped"] = skipped
    cut_at = ladder[0].cut_at
    if cut_at is not None:
        verdict.details["continuation_cut_at"] = cut_at
    return verdict


def _span_for(extraction: Extraction, gold: Gold) -> str | None:
    """The span to read for this rung; the last-number fallback adapts to a several-value gold."""
    if extraction.marker == "last_number" and gold.shape == "numbers":
        return " ; ".join(extraction.candidates[-len(gold.numbers) :])
    return extraction.text


def _last_line(response: str, cut_at: int | None) -> str | None:
    body = response if cut_at is None else response[:cut_at]
    lines = [line for line in body[-2000:].splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def _boxes_disagree(candidates: list[str], gold: Gold) -> Verdict | None:
    values: dict[str, str] = {}
    for candidate in candidates:
        reading = _read(candidate, gold)
        if isinstance(reading, _Reading):
            values.setdefault(reading.value, candidate)
    if len(values) <= 1:
        return None
    verdict = failed(
        AMBIGUOUS,
        f"{len(values)} different boxed answers",
        candidates=list(values)[:10],
        gold=gold.canonical,
    )
    verdict.extracted, verdict.marker = candidates[-1], "boxed"
    return verdict


def _judge_span(span: str, gold: Gold, marker: str, confidence: str) -> Verdict:
    return _verdict(span, _read(span, gold), gold, marker, confidence)


def _verdict(span: str, reading: _Reading | ReadFailure, gold: Gold, marker: str, confidence: str) -> Verdict:
    if isinstance(reading, ReadFailure):
        verdict = failed(reading.kind, reading.reason, gold=gold.canonical)
        verdict.extracted, verdict.marker, verdict.confidence = span, marker, confidence
        return verdict
    kind = MATCH if reading.matched else MISMATCH
    return Verdict(
        match=reading.matched,
        kind=kind,
        extracted=span,
        value=reading.value,
        marker=marker,
        method=reading.method,
        confidence=confidence,
        details={"gold": gold.canonical},
    )


def _read(span: str, gold: Gold) -> _Reading | ReadFailure:
    """Read `span` the way `gold`'s shape needs and compare."""
    shape = gold.shape
    if shape == "number":
        number = read_single_number(span)
        if isinstance(number, ReadFailure):
            return number
        return _number_reading(number, gold)
    if shape == "numbers":
        numbers = read_number_list(span)
        if isinstance(numbers, ReadFailure):
            return numbers
        return _numbers_reading(numbers, gold)
    if shape == "clock":
        clock = read_clock(span)
        if clock is None:
            return ReadFailure(NO_ANSWER, "no clock time in the answer", empty=True)
        return _clock_reading(clock, gold)
    if shape == "colon":
        parts = read_colon(span)
        if parts is None:
            return ReadFailure(NO_ANSWER, "no ratio or time (a:b) in the answer", empty=True)
        return _Reading(":".join(map(str, parts)), parts == gold.parts, "colon")
    if shape == "boolean":
        boolean = read_boolean(span)
        if boolean is None:
            return ReadFailure(NO_ANSWER, "the answer does not start with yes or no", empty=True)
        return _Reading("yes" if boolean else "no", boolean == gold.boolean, "boolean")
    if shape == "ordinal":
        ordinal = read_ordinal(span)
        if ordinal is None:
            return ReadFailure(NO_ANSWER, "no ordinal or number in the answer", empty=True)
        return _Reading(str(ordinal), (ordinal,) == gold.parts, "ordinal")
    if shape == "texts":
        parts_said = [normalise_answer_text(p) for p in split_parts(span)]
        return _Reading("; ".join(parts_said), tuple(parts_said) == gold.texts, "text")
    said = normalise_answer_text(span)
    if not said:
        return ReadFailure(NO_ANSWER, "empty answer", empty=True)
    return _Reading(said, text_matches(span, gold.texts[0] if gold.texts else ""), "text")


def _number_reading(number: ReadNumber, gold: Gold) -> _Reading:
    method = compare_numbers(number, gold.number)
    return _Reading(_number_text(number.value), method is not None, method or "exact")


def _numbers_reading(numbers: list[ReadNumber], gold: Gold) -> _Reading:
    value = "; ".join(_number_text(n.value) for n in numbers)
    if len(numbers) != len(gold.numbers):
        return _Reading(value, False, "numbers")
    matched = all(compare_numbers(s, g) is not None for s, g in zip(numbers, gold.numbers, strict=True))
    return _Reading(value, matched, "numbers")


def _clock_reading(clock: ClockTime, gold: Gold) -> _Reading:
    assert gold.clock is not None
    shown = clock_key(clock) if clock.definite else _bare_clock(clock)
    return _Reading(shown, clock.definite and clock.seconds == gold.clock.seconds, "clock")


def _bare_clock(clock: ClockTime) -> str:
    hours, rest = divmod(clock.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")


def _number_text(value: Fraction) -> str:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > 4000:
        return "<number too long to show>"
    return format_fraction(value)


# --- Program-of-Thought ----------------------------------------------------------------------


def _judge_value(value: object, gold: Gold) -> Verdict:
    if gold.shape == "none":
        verdict = _no_gold()
        verdict.extracted, verdict.marker = _shown(value), "program"
        return verdict
    if value is None:
        verdict = failed(NO_ANSWER, "the program's answer is None", gold=gold.canonical)
        verdict.marker = "program"
        return verdict
    if isinstance(value, Unsupported):
        return _program_mismatch(value.reason, value, gold)
    if isinstance(value, str):
        if len(value) > MAX_PROGRAM_TEXT_CHARS:
            return _program_mismatch(f"a text answer of {len(value)} characters", value, gold)
        return _judge_span(value, gold, "program", HIGH)
    if isinstance(value, bool):
        if gold.shape in ("text", "texts", "boolean"):
            return _judge_span("yes" if value else "no", gold, "program", HIGH)
        return _program_mismatch("a boolean is not a number", value, gold)
    if isinstance(value, list):
        return _judge_list(value, gold)
    number = number_from_value(value)
    if number is None:
        return _program_mismatch(f"not a finite number: {value!r}"[:80], value, gold)
    if gold.shape == "number":
        reading = _number_reading(number, gold)
        shortest = float_repr_number(value) if isinstance(value, float) else None
        if not reading.matched and shortest is not None:
            # The float's shortest repr: a program answering exactly the gold's text matches.
            exact = _number_reading(shortest, gold)
            reading = exact if exact.matched else reading
        return _program_verdict(reading, value, gold)
    if gold.shape == "numbers":
        return _program_verdict(_numbers_reading([number], gold), value, gold)
    if gold.shape == "ordinal":
        matched = number.value.denominator == 1 and (int(number.value),) == gold.parts
        return _program_verdict(_Reading(_number_text(number.value), matched, "ordinal"), value, gold)
    return _judge_span(number.text, gold, "program", HIGH)


def _judge_list(values: list[Any], gold: Gold) -> Verdict:
    if gold.shape != "numbers":
        if len(values) == 1:
            return _judge_value(values[0], gold)
        verdict = failed(AMBIGUOUS, f"a list of {len(values)} values for one answer", gold=gold.canonical)
        verdict.extracted, verdict.marker = _shown(values), "program"
        return verdict
    numbers: list[ReadNumber] = []
    for item in values:
        number = read_single_number(item) if isinstance(item, str) else number_from_value(item)
        if not isinstance(number, ReadNumber):
            return _program_mismatch(f"list item {item!r} is not a number"[:80], values, gold)
        numbers.append(number)
    return _program_verdict(_numbers_reading(numbers, gold), values, gold)


def _program_verdict(reading: _Reading, value: object, gold: Gold) -> Verdict:
    return Verdict(
        match=reading.matched,
        kind=MATCH if reading.matched else MISMATCH,
        extracted=_shown(value),
        value=reading.value,
        marker="program",
        method=reading.method,
        confidence=HIGH,
        details={"gold": gold.canonical},
    )


def _program_mismatch(reason: str, value: object, gold: Gold) -> Verdict:
    verdict = failed(MISMATCH, reason, gold=gold.canonical)
    verdict.extracted, verdict.marker = _shown(value), "program"
    return verdict


def _shown(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value[:1000]
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4000:
        return f"<integer of {value.bit_length()} bits>"
    if isinstance(value, Unsupported):
        return None
    try:
        return repr(value)[:1000]
    except ValueError:  # a Fraction or list holding an integer past Python's str limit
        return "<value too long to show>"
