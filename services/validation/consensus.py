"""Consensus pseudo-gold for unlabelled problems: the majority answer of teachers and samples.

When a corpus has no gold answer, every rationale of a problem (all teachers, all samples, CoT
and PoT alike) casts one vote: the canonical key of its answer (`vote_key_for_response`,
`vote_key_for_answer`). Keys are exact: `18`, `18.0` and `$18` are one vote for `"18"`; `3:30 pm`
and `15:30` one vote for `"3:30 p.m."`; a text answer votes with its normalised text. A rationale
with no readable answer (none, ambiguous, a failed program) votes for nothing but still counts
as a sample.

`form_consensus` accepts the most voted key as the pseudo-gold when
- `agreement = votes / samples` (samples include the ones without an answer) is at least
  `min_agreement` (default 0.6),
- it has at least `min_votes` votes (default 2: one sample is not a consensus), and
- no other key has as many votes (a tie is no consensus).

Rationales are then judged against `Consensus` instead of a gold (`matching.judge_cot(text,
consensus)`); their verdicts say `method: consensus` and carry the agreement, votes and samples.
A pseudo-gold is only as good as the teachers: a consensus of wrong answers is still wrong.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from services.validation.answers import MAX_RESPONSE_CHARS, extract_ladder
from services.validation.numbers import format_fraction
from services.validation.program_answers import ProgramValue, plain_program_value
from services.validation.reading import ReadNumber, number_from_value, read_single_number
from services.validation.text_answers import (
    clock_key,
    normalise_answer_text,
    read_boolean,
    read_clock,
    read_colon,
)

DEFAULT_MIN_AGREEMENT = 0.6
DEFAULT_MIN_VOTES = 2
TALLY_SHOWN = 10


@dataclass(slots=True)
class Consensus:
    """The outcome of a vote. `pseudo_gold` is set only when `accepted`; it is a gold text that
    `gold.parse_gold` reads back (`"18"`, `"-5/2"`, `"3:30 p.m."`, `"yes"`, normalised text)."""

    accepted: bool
    pseudo_gold: str | None
    top_answer: str | None
    votes: int
    samples: int
    agreement: float
    min_agreement: float
    min_votes: int
    tally: dict[str, int] = field(default_factory=dict)
    reason: str | None = None

    def to_details(self) -> dict[str, Any]:
        """What a verdict judged by this consensus records about it."""
        details: dict[str, Any] = {
            "pseudo_gold": self.pseudo_gold,
            "agreement": round(self.agreement, 4),
            "votes": self.votes,
            "samples": self.samples,
            "min_agreement": self.min_agreement,
            "min_votes": self.min_votes,
            "tally": dict(self.tally),
        }
        if self.reason:
            details["consensus_reason"] = self.reason
        return details


def form_consensus(
    keys: Iterable[str | None],
    *,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    min_votes: int = DEFAULT_MIN_VOTES,
) -> Consensus:
    """The majority vote over one problem's answer keys (None: a sample without an answer)."""
    if not 0.0 < min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be in (0, 1], got {min_agreement}")
    if min_votes < 1:
        raise ValueError(f"min_votes must be at least 1, got {min_votes}")
    all_keys = list(keys)
    samples = len(all_keys)
    counts = Counter(k for k in all_keys if k is not None)
    ranked = counts.most_common()
    tally = dict(ranked[:TALLY_SHOWN])

    def rejected(reason: str, top: str | None, votes: int) -> Consensus:
        agreement = votes / samples if samples else 0.0
        return Consensus(False, None, top, votes, samples, agreement, min_agreement, min_votes, tally, reason)

    if not ranked:
        return rejected("no sample has a readable answer" if samples else "no samples", None, 0)
    top, votes = ranked[0]
    agreement = votes / samples
    if len(ranked) > 1 and ranked[1][1] == votes:
        return rejected(f"tie between {top!r} and {ranked[1][0]!r} ({votes} votes each)", top, votes)
    if votes < min_votes:
        return rejected(f"{votes} vote(s) for {top!r}, fewer than min_votes={min_votes}", top, votes)
    if agreement < min_agreement:
        return rejected(
            f"agreement {agreement:.2f} on {top!r} is below min_agreement={min_agreement}", top, votes
        )
    return Consensus(True, top, top, votes, samples, agreement, min_agreement, min_votes, tally)


def vote_key_for_span(span: str) -> str | None:
    """The canonical key of an answer span, read without a gold (None: no single answer)."""
    number = read_single_number(span)
    if isinstance(number, ReadNumber):
        return format_fraction(number.value)
    clock = read_clock(span)
    if clock is not None and clock.definite:
        return clock_key(clock)
    colon = read_colon(span)
    if colon is not None:
        return ":".join(map(str, colon))
    boolean = read_boolean(span)
    if boolean is not None:
        return "yes" if boolean else "no"
    if number.kind == "ambiguous":
        return None
    text = normalise_answer_text(span)
    return text or None


def vote_key_for_response(response: str) -> str | None:
    """The vote of a Chain-of-Thought response: the key of the first rung of the answer ladder
    (None when that answer is ambiguous, e.g. several different boxes, or nothing was found).

    Without a gold the shape of the answer is not known, so unlike the matcher this does not go
    down the ladder past a rung whose text holds no number: "Answer: let's think step by step"
    followed by no other marker votes for that text (a wasted vote, not a wrong match)."""
    if len(response) > MAX_RESPONSE_CHARS:
        return None
    ladder = extract_ladder(response)
    first = ladder[0] if ladder else None
    if first is None or first.text is None:
        return None
    if first.marker == "boxed" and len(first.candidates) > 1:
        keys = {vote_key_for_span(c) for c in first.candidates} - {None}
        if len(keys) > 1:
            return None
    return vote_key_for_span(first.text)


def vote_key_for_answer(answer: object) -> str | None:
    """The vote of a program's answer (a plain value or the sandbox's `Answer` record)."""
    value = plain_program_value(answer)
    return _value_key(value)


def _value_key(value: ProgramValue) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return vote_key_for_span(value)
    if isinstance(value, list):
        keys = [_value_key(v) for v in value]
        if not keys or any(k is None for k in keys):
            return None
        return keys[0] if len(keys) == 1 else "; ".join(k for k in keys if k is not None)
    number = number_from_value(value) if not isinstance(value, Fraction) else ReadNumber(value, None, "")
    return format_fraction(number.value) if number is not None else None
