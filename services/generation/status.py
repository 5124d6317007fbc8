"""Progress of a generation job, read from Postgres: what `kpdd status` shows.

- problems: `done` counts only problems whose state is `done`; `finished` counts every problem
  in a terminal state (done, failed, budget, cancelled), the progress of the job.
- failures by kind (`failures`): each kind with its failed problems (`job_problems`), the times
  it was recorded on the job (`job_failures`: chunk and worker errors, refusals, give-ups) with
  the workers it happened on, and one message. Teacher call failures (`server`, `auth`, ...)
  come from the problems; the system's (`config`, `unexpected`, `attempt_cap`, ...) from both.
- `read_by_fallback`: how many of the job's verdicts read their answer through the
  low-confidence fallback of answer matching (counted as `kpdd validate` counts them:
  `services.validation.verdict.read_by_fallback`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from db.models import Corpus, GenerationJob
from db.nul import unescape_nul
from db.queries.batches import BatchFigures, batch_figures
from db.queries.budget import job_spend
from db.queries.failures import failed_problem_messages, failure_groups
from db.queries.generation import (
    failure_counts,
    rationale_counts,
    rationale_failure_kinds,
    recent_rationales,
    state_counts,
    verdict_confidence_counts,
)
from services.generation.jobs import load_job
from services.validation.verdict import read_by_fallback

RATE_WINDOW = timedelta(seconds=60)


def money(value: Decimal) -> str:
    """Dollars as plain text with cents and sub-cent precision: `0.000000`, `1.234567`."""
    return f"{value:.6f}"


@dataclass(slots=True)
class TeacherModeCounts:
    teacher: str
    mode: str
    verdicts: dict[str, int] = field(default_factory=dict)

    @property
    def valid(self) -> int:
        return self.verdicts.get("valid", 0)

    @property
    def total(self) -> int:
        return sum(self.verdicts.values())


@dataclass(slots=True)
class FailureKind:
    """The failures of one kind: problems failed with it, times recorded on the job (with the
    workers it happened on), and one message."""

    kind: str
    problems: int
    recorded: int
    workers: list[str]
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "problems": self.problems,
            "recorded": self.recorded,
            "workers": self.workers,
            "message": self.message,
        }


@dataclass(slots=True, frozen=True)
class _Confidence:
    confidence: str


@dataclass(slots=True)
class JobStatus:
    job_id: int
    status: str
    corpus: str
    split: str | None
    teachers: list[str]
    modes: list[str]
    total_problems: int
    states: dict[str, int]
    rationales: list[TeacherModeCounts]
    problem_failures: dict[str, int]
    rationale_failures: dict[str, int]
    failures: list[FailureKind]
    read_by_fallback: int
    spent_usd: Decimal
    budget_usd: Decimal | None
    # Held by calls in flight now, and held by workers that died while calling (may be paid).
    held_usd: Decimal
    unknown_usd: Decimal
    rate_per_s: float
    stop_reason: str | None
    created_at: datetime
    finished_at: datetime | None
    batches: BatchFigures | None = None  # None: the job sent nothing through a provider batch

    @property
    def done(self) -> int:
        """Problems whose state is `done`."""
        return self.states.get("done", 0)

    @property
    def finished(self) -> int:
        """Problems in a terminal state, whichever: the job's progress."""
        return self.total_problems - self.states.get("pending", 0)

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate of problems (None when idle or finished)."""
        pending = self.states.get("pending", 0)
        if pending == 0 or self.rate_per_s <= 0:
            return None
        per_problem = sum(r.total for r in self.rationales) / max(1, self.finished)
        return pending * max(per_problem, 1.0) / self.rate_per_s

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "corpus": self.corpus,
            "split": self.split,
            "teachers": self.teachers,
            "modes": self.modes,
            "problems": {"total": self.total_problems, "done": self.done, "by_state": self.states},
            "rationales": [
                {
                    "teacher": r.teacher,
                    "mode": r.mode,
                    "valid": r.valid,
                    "total": r.total,
                    "by_verdict": r.verdicts,
                }
                for r in self.rationales
            ],
            "failures": {
                "problems": self.problem_failures,
                "rationales": self.rationale_failures,
                "by_kind": [f.to_json() for f in self.failures],
            },
            "read_by_fallback": self.read_by_fallback,
            "spent_usd": money(self.spent_usd),
            "in_flight_usd": money(self.held_usd),
            "unknown_outcome_usd": money(self.unknown_usd),
            "spent_incl_unknown_usd": money(self.spent_usd + self.unknown_usd),
            "budget_usd": None if self.budget_usd is None else money(self.budget_usd),
            "rate_rationales_per_s": round(self.rate_per_s, 2),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "stop_reason": self.stop_reason,
            "created_at": self.created_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            "batches": None if self.batches is None else batches_json(self.batches),
        }


def batches_json(figures: BatchFigures) -> dict[str, Any]:
    return {
        "by_state": figures.by_state,
        "requests": figures.requests,
        "answered": figures.answered,
        "queued": figures.queued,
        "waiting_chunks": figures.waiting_chunks,
        "cost_usd": money(figures.cost_usd),
        "online_cost_usd": money(figures.online_cost_usd),
        "saved_usd": money(figures.saved_usd),
    }


def job_status(engine: Engine, job_id: int) -> JobStatus:
    with Session(engine) as session:
        job = load_job(session, job_id)
        corpus = session.get(Corpus, job.corpus_id)
        by_key: dict[tuple[str, str], TeacherModeCounts] = {}
        teachers = [tuple(t["label"].split(":", 1)) for t in job.teachers]
        fallback = sum(
            count
            for confidence, count in verdict_confidence_counts(session, job_id)
            if confidence is not None and read_by_fallback(_Confidence(confidence))
        )
        scope = rationale_counts(session, job_id, teachers, job.modes, job.stage_mode)
        for provider, model, mode, verdict, count in scope:
            key = (f"{provider}:{model}", mode)
            by_key.setdefault(key, TeacherModeCounts(*key)).verdicts[verdict] = count
        rate = _rate(session, job, sum(c.total for c in by_key.values()))
        spend = job_spend(session, job_id)
        return JobStatus(
            job_id=job.id,
            status=job.status,
            corpus=corpus.name if corpus else "?",
            split=job.split,
            teachers=[t["label"] for t in job.teachers],
            modes=list(job.modes),
            total_problems=job.total_problems,
            states=state_counts(session, job_id),
            rationales=list(by_key.values()),
            problem_failures=failure_counts(session, job_id),
            rationale_failures=rationale_failure_kinds(session, job_id),
            failures=_failure_kinds(session, job_id),
            read_by_fallback=fallback,
            spent_usd=job.spent_usd,
            budget_usd=job.budget_usd,
            held_usd=spend.held_usd if spend else Decimal(0),
            unknown_usd=spend.unknown_usd if spend else Decimal(0),
            rate_per_s=rate,
            stop_reason=job.stop_reason,
            created_at=job.created_at,
            finished_at=job.finished_at,
            batches=batch_figures(session, job_id),
        )


def _failure_kinds(session: Session, job_id: int) -> list[FailureKind]:
    """Failed problems by error kind and recorded failures by kind, merged; most problems first."""
    problems = failed_problem_messages(session, job_id)
    recorded = {g.kind: g for g in failure_groups(session, job_id)}
    kinds = []
    for kind in {*problems, *recorded}:
        count, problem_message = problems.get(kind, (0, ""))
        group = recorded.get(kind)
        kinds.append(
            FailureKind(
                kind,
                count,
                group.events if group else 0,
                group.workers if group else [],
                unescape_nul(group.message if group else problem_message) or "",
            )
        )
    return sorted(kinds, key=lambda f: (-f.problems, -f.recorded, f.kind))


def _rate(session: Session, job: GenerationJob, produced: int) -> float:
    """Rationales per second: over the job's whole run once it has finished, else over the last
    minute (or the time since it started, if shorter)."""
    started = _aware(job.started_at or job.created_at)
    if job.finished_at is not None:
        seconds = (_aware(job.finished_at) - started).total_seconds()
        return produced / seconds if seconds > 0 else 0.0
    now = datetime.now(UTC)
    window = min(RATE_WINDOW, now - started)
    if window.total_seconds() <= 0:
        return 0.0
    return recent_rationales(session, job.id, now - window) / window.total_seconds()


def _aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes (stored as UTC); Postgres aware ones."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def list_jobs(engine: Engine, limit: int = 20) -> list[JobStatus]:
    with Session(engine) as session:
        ids = list(session.scalars(select(GenerationJob.id).order_by(GenerationJob.id.desc()).limit(limit)))
    return [job_status(engine, job_id) for job_id in ids]
