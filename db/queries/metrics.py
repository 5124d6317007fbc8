"""Aggregates behind `/metrics` (Prometheus) and the dashboard. Each is one GROUP BY, so a scrape
costs the same with 100 or 100,000 jobs' rows (the grouped columns are indexed or few)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import GenerationJob, Rationale, TeacherCall, TrainingRun


def call_totals(session: Session) -> list[tuple[str, str, str, int, int, int, float]]:
    """(provider, model, status, calls, tokens in, tokens out, cost in dollars)."""
    rows = session.execute(
        select(
            TeacherCall.provider,
            TeacherCall.model,
            TeacherCall.status,
            func.count(),
            func.coalesce(func.sum(TeacherCall.tokens_in), 0),
            func.coalesce(func.sum(TeacherCall.tokens_out), 0),
            func.coalesce(func.sum(TeacherCall.cost_usd), 0),
        ).group_by(TeacherCall.provider, TeacherCall.model, TeacherCall.status)
    )
    return [(str(p), str(m), str(s), int(c), int(i), int(o), float(d)) for p, m, s, c, i, o, d in rows]


def rate_limited_calls(session: Session) -> list[tuple[str, str, int]]:
    """(provider, model, calls that ended on a 429)."""
    rows = session.execute(
        select(TeacherCall.provider, TeacherCall.model, func.count())
        .where(TeacherCall.error_kind == "rate_limit")
        .group_by(TeacherCall.provider, TeacherCall.model)
    )
    return [(str(p), str(m), int(c)) for p, m, c in rows]


def rationale_totals(session: Session) -> list[tuple[str, str, str, int]]:
    """(mode, verdict, verdict kind, rationales): PoT kinds are the sandbox's verdicts."""
    rows = session.execute(
        select(Rationale.mode, Rationale.verdict, Rationale.verdict_kind, func.count()).group_by(
            Rationale.mode, Rationale.verdict, Rationale.verdict_kind
        )
    )
    return [(str(m), str(v), str(k or ""), int(c)) for m, v, k, c in rows]


def job_totals(session: Session) -> list[tuple[str, int]]:
    rows = session.execute(select(GenerationJob.status, func.count()).group_by(GenerationJob.status))
    return [(str(s), int(c)) for s, c in rows]


def live_run_speeds(session: Session) -> list[tuple[int, float]]:
    """(run id, tokens/s per GPU) of the runs now training."""
    rows = session.execute(
        select(TrainingRun.id, TrainingRun.tokens_per_s_per_gpu).where(
            TrainingRun.state == "running", TrainingRun.tokens_per_s_per_gpu.is_not(None)
        )
    )
    return [(int(i), float(t)) for i, t in rows]
