"""What a snapshot holds: the export's filter specification, checked, in one canonical form.

`ExportSpec` is everything that decides a snapshot's bytes besides the database state: the row
filters (jobs, corpora, teachers, modes, verdict), the per-problem filters (cap, deduplication,
decontamination), the split rule and the file format and layout. Lists are sorted and
de-duplicated when the spec is built, so `--corpus b --corpus a` and `--corpus a b` are the same
spec. `to_json()` is what the manifest and the database store; `canonical_json()` is its one byte
form (sorted keys, no whitespace), hashed into the snapshot id. The output directory is not part
of the spec: the same export written to two places is the same snapshot.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from services.errors import BadInputError
from services.kpdd.formatting import LAYOUT_TASKS
from services.teachers.spec import parse_spec

SPEC_VERSION = 1
MODES = ("cot", "pot")
VERDICT_CHOICES = ("valid", "all")
FORMATS = ("parquet", "jsonl")
# end-to-end, two-stage, cascade: the layouts of student tasks (`formatting.LAYOUT_TASKS`).
LAYOUTS = tuple(LAYOUT_TASKS)

DEFAULT_NEAR_DUPLICATE_THRESHOLD = 0.8
DEFAULT_DECONTAM_NGRAM = 10
DEFAULT_DECONTAM_THRESHOLD = 0.2
DEFAULT_SPLIT_SEED = "kpdd"
DEFAULT_ROW_GROUP_SIZE = 10_000


def parse_modes(text: str) -> tuple[str, ...]:
    """`cot` | `pot` | `both` -> the modes exported."""
    if text == "both":
        return MODES
    if text not in MODES:
        raise BadInputError(f"--mode: {text!r} is not one of cot, pot, both")
    return (text,)


def teacher_label(text: str) -> str:
    """`--teacher PROVIDER:MODEL` -> the teacher's identity `provider:model`. Options and a base
    URL select nothing (a rationale is identified by provider and model alone), so they are
    refused rather than silently ignored."""
    spec = parse_spec(text)
    if spec.base_url is not None or spec.options.model_dump(exclude_unset=True):
        raise BadInputError(
            f"--teacher {text!r}: give PROVIDER:MODEL only (e.g. {spec.label}); options and URLs "
            "do not identify a teacher's rationales"
        )
    return spec.label


def canonical_json(document: Any) -> str:
    """The one text form of a JSON document: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(slots=True)
class ExportSpec:
    """The filters and the format of one export. Defaults are the documented CLI defaults.

    - `jobs`: only rationales in these generation jobs' scope (see `query.select_rationales`);
      `corpora`: only problems of these corpora; `teachers`: only these `provider:model`;
      `modes`: `cot`, `pot` or both. An empty tuple means no restriction.
    - `verdict`: `valid` (default) exports valid rationales only, `all` every verdict.
    - `max_per_problem`: at most N rationales per (problem, mode), chosen as `filters.cap` says.
    - `dedupe`: drop exact and near-duplicate solutions per (problem, mode); two solutions are
      near duplicates when the Jaccard similarity of their token 3-gram sets is at least
      `near_duplicate_threshold`.
    - `decontaminate`: evaluation sets (`decontam.resolve_eval_sets` names); a problem is dropped
      when at least `decontam_threshold` of its question's distinct word `decontam_ngram`-grams
      occur in one evaluation question.
    - `val_fraction`: share of problems (by a hash of the normalised question and `split_seed`)
      in the `validation` split; the rest is `train`.
    - `row_group_size`: rows per Parquet row group (and per write batch for JSON lines).
    """

    jobs: tuple[int, ...] = ()
    corpora: tuple[str, ...] = ()
    teachers: tuple[str, ...] = ()
    modes: tuple[str, ...] = MODES
    verdict: str = "valid"
    max_per_problem: int | None = None
    dedupe: bool = False
    near_duplicate_threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD
    decontaminate: tuple[str, ...] = ()
    decontam_ngram: int = DEFAULT_DECONTAM_NGRAM
    decontam_threshold: float = DEFAULT_DECONTAM_THRESHOLD
    val_fraction: float = 0.0
    split_seed: str = DEFAULT_SPLIT_SEED
    format: str = "parquet"
    layout: str = "end-to-end"
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE

    def __post_init__(self) -> None:
        self.jobs = tuple(sorted(set(self.jobs)))
        self.corpora = tuple(sorted(set(self.corpora)))
        self.teachers = tuple(sorted({teacher_label(t) for t in self.teachers}))
        for mode in self.modes:
            if mode not in MODES:
                raise BadInputError(f"--mode: {mode!r} is not one of cot, pot, both")
        self.modes = tuple(m for m in MODES if m in set(self.modes))
        self.decontaminate = tuple(sorted(set(self.decontaminate)))
        if not self.modes:
            raise BadInputError("--mode: give cot, pot or both")
        if self.verdict not in VERDICT_CHOICES:
            raise BadInputError(f"--verdict: {self.verdict!r} is not one of valid, all")
        if self.format not in FORMATS:
            raise BadInputError(f"--format: {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.layout not in LAYOUTS:
            raise BadInputError(f"--layout: {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.max_per_problem is not None and self.max_per_problem < 1:
            raise BadInputError(f"--max-per-problem: must be at least 1, got {self.max_per_problem}")
        _check_fraction("--near-duplicate-threshold", self.near_duplicate_threshold, low_open=True)
        _check_fraction("--decontam-threshold", self.decontam_threshold, low_open=True)
        if not 1 <= self.decontam_ngram <= 50:
            raise BadInputError(
                f"--decontam-ngram: must be between 1 and 50 words, got {self.decontam_ngram}"
            )
        _check_fraction("--val-fraction", self.val_fraction, high_open=True)
        if not self.split_seed:
            raise BadInputError("--split-seed: must not be empty")
        if not 1_000 <= self.row_group_size <= 1_000_000:
            raise BadInputError(
                f"--row-group-size: must be between 1000 and 1000000 rows, got {self.row_group_size}"
            )
        for job in self.jobs:
            if job < 1:
                raise BadInputError(f"--job: {job} is not a job id (see `kpdd status`)")

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits written: `train`, and `validation` when `val_fraction` > 0."""
        return ("train", "validation") if self.val_fraction > 0 else ("train",)

    def to_json(self) -> dict[str, Any]:
        """The specification as stored in the manifest and the database (every default resolved)."""
        return {
            "spec_version": SPEC_VERSION,
            "select": {
                "jobs": list(self.jobs),
                "corpora": list(self.corpora),
                "teachers": list(self.teachers),
                "modes": list(self.modes),
                "verdict": self.verdict,
            },
            "max_per_problem": self.max_per_problem,
            "dedupe": {
                "enabled": self.dedupe,
                "scope": "problem+mode",
                "exact": "whitespace-normalised solution text",
                "near": "token 3-gram Jaccard",
                "near_threshold": self.near_duplicate_threshold,
            },
            "decontaminate": {
                "datasets": list(self.decontaminate),
                "ngram": self.decontam_ngram,
                "threshold": self.decontam_threshold,
                "measure": "share of the question's distinct word n-grams found in one eval question",
            },
            "splits": {
                "names": list(self.splits),
                "val_fraction": self.val_fraction,
                "seed": self.split_seed,
                "by": "sha256 of seed + normalised question",
            },
            "format": self.format,
            "layout": self.layout,
            "row_group_size": self.row_group_size,
        }


def _check_fraction(flag: str, value: float, *, low_open: bool = False, high_open: bool = False) -> None:
    ok = (
        math.isfinite(value)
        and (value > 0 if low_open else value >= 0)
        and (value < 1 if high_open else value <= 1)
    )
    if not ok:
        low = "(0" if low_open else "[0"
        high = "1)" if high_open else "1]"
        raise BadInputError(f"{flag}: must be in {low}, {high}, got {value}")


def snapshot_id(spec_json: dict[str, Any], data_files: dict[str, str]) -> str:
    """The content-derived id: `snap-` and 20 hex digits of the sha256 over the canonical spec and
    every data file's path and sha256 (the card and the manifest are derived, so not included)."""
    digest = hashlib.sha256(
        canonical_json({"spec": spec_json, "files": dict(sorted(data_files.items()))}).encode()
    )
    return "snap-" + digest.hexdigest()[:20]


__all__ = [
    "DEFAULT_DECONTAM_NGRAM",
    "DEFAULT_DECONTAM_THRESHOLD",
    "DEFAULT_NEAR_DUPLICATE_THRESHOLD",
    "FORMATS",
    "LAYOUTS",
    "MODES",
    "ExportSpec",
    "canonical_json",
    "parse_modes",
    "snapshot_id",
    "teacher_label",
]
