"""Aggregates for the dashboard, computed in the database (GROUP BY over indexed columns), so the
page costs the same with a hundred jobs or a hundred thousand. The caller owns the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.orm import Session

from db.models import GenerationJob, JobProblem, Rationale, TeacherCall


@dataclass(slots=True)
class TeacherModeYield:
    provider: str
    model: str
    mode: str
    generated: int
    valid: int
    cost_usd: Decimal | None  # None: no priced call

    @property
    def teacher(self) -> str:
        return f"{self.provider}:{self.model}"


def yields(session: Session) -> list[TeacherModeYield]:
    """Per teacher and mode: rationales generated, valid ones, and what they cost."""
    valid = func.sum(case((Rationale.verdict == "valid", 1), else_=0))
    rows = session.execute(
        select(
            Rationale.provider,
            Rationale.model,
            Rationale.mode,
            func.count(),
            valid,
            func.sum(Rationale.cost_usd),
        )
        .group_by(Rationale.provider, Rationale.model, Rationale.mode)
        .order_by(Rationale.provider, Rationale.model, Rationale.mode)
    )
    return [
        TeacherModeYield(str(p), str(m), str(mo), int(n), int(v or 0), None if c is None else Decimal(c))
        for p, m, mo, n, v, c in rows
    ]


def call_figures(session: Session) -> dict[tuple[str, str], dict[str, float | int | None]]:
    """Per teacher: calls made (not replays), calls ended on HTTP 429, and latency percentiles
    (ms) of the answered ones. Percentiles are computed by Postgres; other databases (the embedded
    SQLite) sort the latencies here."""
    out: dict[tuple[str, str], dict[str, float | int | None]] = {}
    counted = session.execute(
        select(
            TeacherCall.provider,
            TeacherCall.model,
            func.count(),
            func.sum(case((TeacherCall.error_kind == "rate_limit", 1), else_=0)),
        ).group_by(TeacherCall.provider, TeacherCall.model)
    )
    for provider, model, calls, limited in counted:
        out[(str(provider), str(model))] = {"calls": int(calls), "rate_limited": int(limited or 0)}
    answered = TeacherCall.latency_ms.is_not(None), TeacherCall.status.in_(("ok", "refused"))
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(
            select(
                TeacherCall.provider,
                TeacherCall.model,
                *(func.percentile_cont(q).within_group(TeacherCall.latency_ms) for q in (0.5, 0.95, 0.99)),
            )
            .where(*answered)
            .group_by(TeacherCall.provider, TeacherCall.model)
        )
        for provider, model, p50, p95, p99 in rows:
            out.setdefault((str(provider), str(model)), {}).update(p50_ms=p50, p95_ms=p95, p99_ms=p99)
        return out
    for key, figures in out.items():
        latencies = sorted(
            int(v or 0)
            for v in session.scalars(
                select(TeacherCall.latency_ms).where(
                    *answered, TeacherCall.provider == key[0], TeacherCall.model == key[1]
                )
            )
        )
        for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            figures[name] = latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None
    return out


def throughput(session: Session, since: datetime, bucket_s: int) -> list[tuple[int, int]]:
    """(bucket start as Unix seconds, rationales created in it) since `since`."""
    if session.get_bind().dialect.name == "postgresql":
        epoch: Any = func.extract("epoch", Rationale.created_at)
    else:
        epoch = func.strftime("%s", Rationale.created_at)
    bucket = (func.floor(cast(epoch, Float) / bucket_s) * bucket_s).label("bucket")
    rows = session.execute(
        select(bucket, func.count()).where(Rationale.created_at >= since).group_by(bucket).order_by(bucket)
    )
    return [(int(b), int(n)) for b, n in rows]


def failure_kinds(session: Session) -> list[tuple[str, str, int]]:
    """(where, kind, count): problems that failed by error kind, and rationales that could not be
    used (unparsed, failed calls) by verdict kind."""
    problems = session.execute(
        select(JobProblem.error_kind, func.count())
        .where(JobProblem.state == "failed")
        .group_by(JobProblem.error_kind)
    )
    rationales = session.execute(
        select(Rationale.verdict, Rationale.verdict_kind, func.count())
        .where(Rationale.verdict.in_(("unparsed", "failed")))
        .group_by(Rationale.verdict, Rationale.verdict_kind)
    )
    out = [("problem", str(k or "unknown"), int(n)) for k, n in problems]
    out += [(f"rationale {v}", str(k or "unknown"), int(n)) for v, k, n in rationales]
    return sorted(out, key=lambda row: -row[2])


def job_status_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(GenerationJob.status, func.count()).group_by(GenerationJob.status))
    return {str(s): int(n) for s, n in rows}
