"""The parameters of a generation job, checked before anything is written or sent."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from services.errors import BadInputError

MODES = ("cot", "pot")
STAGE_MODES = ("single", "staged")
DEFAULT_CHUNK_SIZE = 16


@dataclass(slots=True)
class GenerateParams:
    """What `kpdd generate` was asked to do.

    - `teachers`: spec strings with their options (`openai:gpt-4o-mini,temperature=0.7,rpm=500`).
    - `samples`: sample indices 0..samples-1 are requested for every (problem, teacher, mode).
    - `until_valid`/`max_attempts`: then keep sampling new indices, up to `max_attempts` indices in
      all, until `until_valid` valid rationales exist for that (problem, teacher, mode).
    - `budget_usd`: the job never spends more (cost reserved before each call, settled after).
    - `limit`: only the first N problems of the corpus/split (by id), for trials.
    """

    corpus: str
    teachers: list[str]
    modes: list[str]
    split: str | None = None
    samples: int = 1
    until_valid: int | None = None
    max_attempts: int | None = None
    stage_mode: str = "single"
    budget_usd: Decimal | None = None
    limit: int | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.teachers:
            raise BadInputError("--teacher: give at least one teacher, e.g. --teacher sim:gold")
        if len(set(self.teachers)) != len(self.teachers):
            raise BadInputError("--teacher: the same teacher is given twice")
        for mode in self.modes:
            if mode not in MODES:
                raise BadInputError(f"--mode: {mode!r} is not one of cot, pot, both")
        if not self.modes:
            raise BadInputError("--mode: give cot, pot or both")
        if self.stage_mode not in STAGE_MODES:
            raise BadInputError(f"--stage-mode: {self.stage_mode!r} is not one of single, staged")
        if self.samples < 1:
            raise BadInputError(f"--samples: must be at least 1, got {self.samples}")
        if self.until_valid is not None:
            if self.until_valid < 1:
                raise BadInputError(f"--until-valid: must be at least 1, got {self.until_valid}")
            if self.max_attempts is None:
                raise BadInputError(
                    "--until-valid needs --max-attempts (the most samples to try per problem)"
                )
        if self.max_attempts is not None:
            if self.until_valid is None:
                raise BadInputError("--max-attempts only applies with --until-valid")
            floor = max(self.samples, self.until_valid or 1)
            if self.max_attempts < floor:
                raise BadInputError(
                    f"--max-attempts {self.max_attempts} is below --samples/--until-valid ({floor}); "
                    "raise it or lower them"
                )
        if self.budget_usd is not None and self.budget_usd <= 0:
            raise BadInputError(f"--budget-usd: must be positive, got {self.budget_usd}")
        if self.limit is not None and self.limit < 1:
            raise BadInputError(f"--limit: must be at least 1, got {self.limit}")
        if not 1 <= self.chunk_size <= 10_000:
            raise BadInputError(f"--chunk-size: must be between 1 and 10000, got {self.chunk_size}")

    @property
    def attempts_cap(self) -> int:
        """The most sample indices tried per (problem, teacher, mode)."""
        return self.max_attempts if self.max_attempts is not None else self.samples

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["budget_usd"] = None if self.budget_usd is None else str(self.budget_usd)
        return out


def parse_budget(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        raise BadInputError(f"--budget-usd: {text!r} is not a number of dollars") from None


def parse_modes(text: str) -> list[str]:
    return list(MODES) if text == "both" else [text]
