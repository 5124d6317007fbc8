"""`Verdict`: the judgement of one rationale's answer against a gold (or consensus) answer.

A verdict is data, never an exception: every way an answer can fail (none found, several
different ones, a program that crashed) is a `kind` with a message in `details`, so a batch
reports failures by kind and one bad rationale never sinks it.

Kinds (`VERDICT_KINDS`):
- `match`, `mismatch`: an answer was read and compared.
- `no_answer`: no answer could be read (no marker and no number, or a program that set no `ans`).
- `ambiguous`: several different answers where one was expected (two different `\\boxed{}`,
  "18 or 20").
- `too_long`: the response is longer than `MAX_RESPONSE_CHARS`; not read.
- `no_gold`: the gold is missing and no consensus could be formed (`details` says why);
  `no_consensus`: teachers and samples did not agree enough to make a pseudo-gold.
- `error`, `timeout`, `memory`, `output_cap`, `signal`: the sandbox's kinds for a program that did
  not finish normally, passed through unchanged.
- `bad_input`: the record itself is malformed (used by `kpdd validate` for bad lines).

`marker` says where the answer came from (`boxed`, `hashes`, `answer_is`, `answer_line`,
`last_number`, `last_line`, `program`, or `given` for an answer handed over already extracted);
`method` how it was compared (`exact`, `float_gold`, `precision`, `rounded`, `numbers`, `colon`, `clock`,
`boolean`, `ordinal`, `text`), or `consensus` when the gold was a pseudo-gold (the comparison is
then in `details.compared_by`). `confidence` is `low` only when the answer was found by a
fallback (`last_number`, `last_line`). `details` holds JSON values only: the `gold` compared
with, a `reason` for every non-match kind, and what else the judge noted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

MATCH = "match"
MISMATCH = "mismatch"
NO_ANSWER = "no_answer"
AMBIGUOUS = "ambiguous"
TOO_LONG = "too_long"
NO_GOLD = "no_gold"
NO_CONSENSUS = "no_consensus"
BAD_INPUT = "bad_input"
# The sandbox's kinds for a program that did not finish normally (its `no_answer` maps to ours).
EXECUTION_KINDS = ("error", "timeout", "memory", "output_cap", "signal")

VERDICT_KINDS = (
    MATCH,
    MISMATCH,
    NO_ANSWER,
    AMBIGUOUS,
    TOO_LONG,
    NO_GOLD,
    NO_CONSENSUS,
    BAD_INPUT,
    *EXECUTION_KINDS,
)

HIGH = "high"
LOW = "low"


@dataclass(slots=True)
class Verdict:
    """One judged answer.

    `extracted` is the answer as the response wrote it (the text after the marker) or as the
    program computed it (its repr for non-strings); `value` is its canonical form when one was
    read (`"18"`, `"-5/2"`, `"36; 12"`, normalised text). `match` is true only for kind `match`.
    """

    match: bool
    kind: str
    extracted: str | None = None
    value: str | None = None
    marker: str | None = None
    method: str | None = None
    confidence: str = HIGH
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in VERDICT_KINDS:
            raise ValueError(f"unknown verdict kind {self.kind!r}")
        if self.match != (self.kind == MATCH):
            raise ValueError(f"match={self.match} contradicts kind {self.kind!r}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with every field (details must hold JSON values)."""
        return {
            "match": self.match,
            "kind": self.kind,
            "extracted": self.extracted,
            "value": self.value,
            "marker": self.marker,
            "method": self.method,
            "confidence": self.confidence,
            "details": dict(self.details),
        }


class _Judged(Protocol):
    @property
    def confidence(self) -> str: ...


def read_by_fallback(verdict: _Judged) -> bool:
    """Whether the verdict's answer was read through the low-confidence fallback (`last_number`,
    `last_line`): what run summaries count (`kpdd validate`, `kpdd probe`)."""
    return verdict.confidence == LOW


def count_read_by_fallback(verdicts: Iterable[_Judged]) -> int:
    """How many of `verdicts` were read through the low-confidence fallback."""
    return sum(1 for verdict in verdicts if read_by_fallback(verdict))


def failed(kind: str, reason: str, **details: Any) -> Verdict:
    """A non-match verdict of `kind` whose details carry `reason` and anything else given."""
    return Verdict(match=False, kind=kind, details={"reason": reason, **details})
