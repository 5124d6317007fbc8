"""What a chunk's run works on and reports: its problems, the (problem, teacher, mode, sample)
items asked, their results, the per-slot bookkeeping of samples and the chunk's report
(`services.generation.execute` runs them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.kpdd.records import KeyPoints
from services.teachers.batching import BATCH_BUDGET, BATCHED
from services.teachers.rationale import CallFailure, RationaleOutcome
from services.teachers.spec import TeacherSpec
from services.validation.verdict import Verdict


@dataclass(slots=True, frozen=True)
class ProblemRow:
    id: int
    question: str
    gold_answer: str | None
    gold_kind: str


@dataclass(slots=True, frozen=True)
class WorkItem:
    problem: ProblemRow
    teacher: TeacherSpec
    mode: str
    sample_index: int


@dataclass(slots=True)
class ItemResult:
    item: WorkItem
    outcome: RationaleOutcome | None  # None: not asked, the budget ran out first
    # Filled in by judging:
    verdict: Verdict | None = None
    judged_by: str | None = None  # gold | consensus
    answer: str | None = None
    vote: str | None = None


@dataclass(slots=True)
class ChunkReport:
    job_id: int
    chunk: int
    problems: int = 0
    rationales: int = 0
    valid: int = 0
    paid_calls: int = 0
    cached_calls: int = 0
    budget_stopped: bool = False
    skipped: str | None = None
    failed: int = 0  # problems failed by an error of the worker (services.generation.failures)
    waiting: int = 0  # problems left pending for their requests in a provider batch

    def __str__(self) -> str:
        if self.skipped:
            return f"skipped ({self.skipped})"
        return (
            f"{self.problems} problems, {self.rationales} rationales ({self.valid} valid), "
            f"{self.paid_calls} paid and {self.cached_calls} cached calls"
            + (", budget exhausted" if self.budget_stopped else "")
            + (f", {self.failed} failed" if self.failed else "")
            + (f", {self.waiting} waiting for a batch" if self.waiting else "")
        )


@dataclass(slots=True)
class JobView:
    id: int
    teachers: list[TeacherSpec]
    modes: list[str]
    stage_mode: str
    samples: int
    until_valid: int | None
    attempts_cap: int
    budgeted: bool
    refresh: bool = False  # --refresh: bypass the response cache, remake stored rationales
    reuse_any_options: bool = False  # --reuse-any-options


@dataclass(slots=True)
class Slot:
    """What is known of one (problem, teacher, mode): sample index -> verdict, and the indices
    asked in this run (never asked twice in one run: a call that failed after its retries is
    asked again only by a later run or delivery)."""

    verdicts: dict[int, str] = field(default_factory=dict)
    asked: set[int] = field(default_factory=set)
    waiting: set[int] = field(default_factory=set)  # queued for a provider batch in this run

    def valid(self) -> int:
        return sum(1 for v in self.verdicts.values() if v == "valid")

    def next_indices(self, job: JobView) -> list[int]:
        """Indices to ask in the next round: the first `samples` without a usable rationale,
        then (with until_valid) as many new ones as valid rationales are still missing, within
        the cap."""
        settled = {i for i, v in self.verdicts.items() if v != "failed"} | self.asked
        todo = [i for i in range(job.samples) if i not in settled]
        if todo:
            return todo
        if job.until_valid is None:
            return []
        missing = job.until_valid - self.valid() - len(self.waiting)  # a waiting one may be valid
        if missing <= 0:
            return []
        return [i for i in range(job.attempts_cap) if i not in settled][:missing]


def waits_for_batch(outcome: RationaleOutcome) -> bool:
    got = outcome.result
    return isinstance(got, CallFailure) and got.kind == BATCHED


def batch_budget_spent(outcome: RationaleOutcome) -> bool:
    got = outcome.result
    return isinstance(got, CallFailure) and got.kind == BATCH_BUDGET


def key_points_of(result: ItemResult) -> KeyPoints | None:
    if result.outcome is None:
        return None
    got = result.outcome.result
    return got if isinstance(got, KeyPoints) else None


__all__ = [
    "ChunkReport",
    "ItemResult",
    "JobView",
    "ProblemRow",
    "Slot",
    "WorkItem",
    "batch_budget_spent",
    "key_points_of",
    "waits_for_batch",
]
