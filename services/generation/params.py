"""The parameters of a generation job, checked before anything is written or sent."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import orjson

from services.errors import BadInputError

if TYPE_CHECKING:
    from services.teachers.spec import TeacherSpec

MODES = ("cot", "pot")
STAGE_MODES = ("single", "staged")
DEFAULT_CHUNK_SIZE = 16
TRANSPORTS = ("online", "batch")


@dataclass(slots=True)
class GenerateParams:
    """What `kpdd generate` was asked to do.

    - `teachers`: spec strings with their options (`openai:gpt-4o-mini,temperature=0.7,rpm=500`).
    - `samples`: sample indices 0..samples-1 are requested for every (problem, teacher, mode).
    - `until_valid`/`max_attempts`: then keep sampling new indices, up to `max_attempts` indices in
      all, until `until_valid` valid rationales exist for that (problem, teacher, mode).
    - `budget_usd`: the job never spends more (cost reserved before each call, settled after).
    - `limit`: only the first N problems of the corpus/split (by id), for trials.
    - `refresh`: bypass the response cache: every call is sent again and its response replaces
      the stored one (later jobs replay the new responses), and rationales stored before this
      job are made again.
    - `reuse_any_options`: reuse stored rationales whatever generation options they were made
      with (legacy rows without an options key included); by default only rationales made with
      this job's options (`options_key`) are reused.
    - `transport`: `online` (one HTTP call per request) or `batch` (every teacher's requests go
      through its provider's batch API: `batch=true` on each spec; `services.teachers.batching`).
      A single teacher takes the option itself (`--teacher openai:gpt-4o-mini,batch=true`), so
      one job may mix a batch teacher with online ones.
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
    refresh: bool = False
    reuse_any_options: bool = False
    transport: str = "online"
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
        if self.transport not in TRANSPORTS:
            raise BadInputError(f"--transport: {self.transport!r} is not one of {', '.join(TRANSPORTS)}")
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


OPTIONS_KEY_LENGTH = 16  # hex characters; `rationales.options_key` is String(16)


def options_key(options: Mapping[str, Any]) -> str:
    """The short, stable hash of the generation options a rationale was made with: the first 16
    hex characters of the sha256 of their canonical JSON (sorted keys). The options are those
    sent with every request (`TeacherOptions.generation()`: temperature, top_p, max_tokens, and
    seed or top_k), so it changes exactly when the output may; rate limits and `api_key_env` are
    not in it. Never '' (that marks rationales stored before options were part of the identity)."""
    canonical = orjson.dumps(dict(options), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:OPTIONS_KEY_LENGTH]


def teacher_options_key(spec: TeacherSpec) -> str:
    """`options_key` of the options a teacher spec sends."""
    return options_key(spec.options.generation())


def parse_budget(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        raise BadInputError(f"--budget-usd: {text!r} is not a number of dollars") from None


def parse_modes(text: str) -> list[str]:
    return list(MODES) if text == "both" else [text]
