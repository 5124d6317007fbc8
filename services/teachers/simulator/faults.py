"""Fault injection: which fault, if any, a request gets. Reproducible by construction.

Random faults: each request is fingerprinted (blake2b of its body bytes, so an SDK retry of the
same call has the same fingerprint) and numbered by attempt (how many times this simulator
process has seen that fingerprint before). The draw is `u = H(seed, fingerprint, attempt,
choice) / 2**64`, and the kinds take consecutive slices of [0, 1) in `FAULT_KINDS` order with
their configured rates. `decide_fault` is a pure function, so a test can predict exactly what
the server will do.

Forced faults, for tests: a header `x-sim-fault: <kind>` or a model name ending in
`+fault=<kind>` (e.g. `gold+fault=500`). `<kind>*N` forces it on the first N attempts of that
request only (then answers normally), e.g. `429*2` to test a retry loop; `none` forces no fault.

Kinds: `429` (rate-limit error with Retry-After), `500` (server error), `hang` (no answer until
the client gives up), and the content faults `wrong`, `malformed`, `truncate`, `refusal`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal, get_args

FaultKind = Literal["429", "500", "hang", "wrong", "malformed", "truncate", "refusal"]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
HTTP_FAULTS: frozenset[str] = frozenset({"429", "500", "hang"})
CONTENT_FAULTS: frozenset[str] = frozenset({"wrong", "malformed", "truncate", "refusal"})

FAULT_HEADER = "x-sim-fault"
MODEL_FAULT_SUFFIX = "+fault="
_FORCED_RE = re.compile(r"^(?P<kind>[a-z0-9]+)(?:\*(?P<n>\d{1,9}))?$")


@dataclass(slots=True, frozen=True)
class FaultRates:
    """Probability of each fault kind per request (content faults: per choice). Sum <= 1."""

    rate_limit: float = 0.0  # "429"
    server_error: float = 0.0  # "500"
    hang: float = 0.0
    wrong: float = 0.0
    malformed: float = 0.0
    truncate: float = 0.0
    refusal: float = 0.0

    def __post_init__(self) -> None:
        for name, rate in self.by_kind().items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate for {name!r} must be between 0 and 1, got {rate}")
        if sum(self.by_kind().values()) > 1.0 + 1e-9:
            raise ValueError("fault rates add up to more than 1")

    def by_kind(self) -> dict[FaultKind, float]:
        return {
            "429": self.rate_limit,
            "500": self.server_error,
            "hang": self.hang,
            "wrong": self.wrong,
            "malformed": self.malformed,
            "truncate": self.truncate,
            "refusal": self.refusal,
        }

    @property
    def any(self) -> bool:
        return any(rate > 0 for rate in self.by_kind().values())


@dataclass(slots=True, frozen=True)
class ForcedFault:
    kind: FaultKind | None  # None: force "no fault"
    attempts: int | None  # only the first N attempts; None: every attempt

    def applies(self, attempt: int) -> bool:
        return self.attempts is None or attempt < self.attempts


def fingerprint(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def draw(seed: int, fp: bytes, attempt: int, choice: int = 0) -> float:
    """The uniform number in [0, 1) that decides a request's fault."""
    h = hashlib.blake2b(fp, digest_size=8, key=seed.to_bytes(8, "little", signed=True))
    h.update(attempt.to_bytes(8, "little"))
    h.update(choice.to_bytes(4, "little"))
    return int.from_bytes(h.digest(), "little") / 2.0**64


def decide_fault(seed: int, fp: bytes, attempt: int, rates: FaultRates, choice: int = 0) -> FaultKind | None:
    """The random fault for (fingerprint, attempt, choice), or None. Pure and deterministic."""
    u = draw(seed, fp, attempt, choice)
    edge = 0.0
    for kind, rate in rates.by_kind().items():
        edge += rate
        if u < edge:
            return kind
    return None


def parse_forced(spec: str) -> ForcedFault:
    """Parse `kind` or `kind*N` (from the header or the model suffix). ValueError if unknown."""
    m = _FORCED_RE.fullmatch(spec.strip().lower())
    if m is None or (m.group("kind") not in FAULT_KINDS and m.group("kind") != "none"):
        raise ValueError(
            f"unknown simulated fault {spec!r}; use one of {', '.join(FAULT_KINDS)} or none, "
            "optionally followed by *N (first N attempts only)"
        )
    kind_text = m.group("kind")
    kind: FaultKind | None = None
    for candidate in FAULT_KINDS:
        if candidate == kind_text:
            kind = candidate
    attempts = int(m.group("n")) if m.group("n") is not None else None
    return ForcedFault(kind, attempts)


def split_model(model: str) -> tuple[str, str | None]:
    """`gold+fault=500` -> (`gold`, `500`); a model without the suffix -> (model, None)."""
    base, sep, spec = model.partition(MODEL_FAULT_SUFFIX)
    return (base, spec) if sep else (model, None)
