"""The dashboard (`GET /`): one static page (services/api/static) that polls the JSON below and
draws charts with uPlot (vendored, MIT; no build step, nothing fetched from the internet).

`GET /api/dashboard` aggregates in the database (see `db.queries.dashboard`), so it answers in the
same time with 100,000 jobs; job, snapshot and run lists come from the paged endpoints.
`GET /api/runs/{id}/curve` reads the run's `metrics.jsonl` (the API must see the run folder, as
it does in docker-compose's shared data volume) and thins it to at most 400 points.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, RedirectResponse
from sqlalchemy.orm import Session

from services.api.app import Read, engine_of
from services.api.errors import not_found

STATIC = Path(__file__).resolve().parent / "static"
CURVE_POINTS = 400
router = APIRouter(tags=["dashboard"])


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse("/dashboard")


@router.get("/dashboard", include_in_schema=False)
def dashboard() -> FileResponse:
    # The page itself holds no data; every figure comes from the API with the reader's token.
    return FileResponse(STATIC / "dashboard.html", media_type="text/html")


@router.get("/api/dashboard", dependencies=[Read])
def summary(
    request: Request,
    hours: Annotated[float, Query(gt=0, le=24 * 30, description="throughput window")] = 6.0,
) -> dict[str, Any]:
    from db.queries import dashboard as q

    bucket_s = max(60, int(hours * 3600 / 120) // 60 * 60)  # at most ~120 points
    since = datetime.now(UTC) - timedelta(hours=hours)
    with Session(engine_of(request)) as session:
        by_status = q.job_status_counts(session)
        yields = q.yields(session)
        calls = q.call_figures(session)
        points = q.throughput(session, since, bucket_s)
        failures = q.failure_kinds(session)
    teachers = []
    for y in yields:
        figures = calls.get((y.provider, y.model), {})
        made = int(figures.get("calls") or 0)
        limited = int(figures.get("rate_limited") or 0)
        teachers.append(
            {
                "teacher": y.teacher,
                "mode": y.mode,
                "generated": y.generated,
                "valid": y.valid,
                "yield": y.valid / y.generated if y.generated else None,
                "cost_usd": None if y.cost_usd is None else float(y.cost_usd),
                "cost_per_valid_usd": float(y.cost_usd) / y.valid
                if y.cost_usd is not None and y.valid
                else None,
                "calls": made,
                "rate_limited_share": limited / made if made else None,
                "latency_ms": {k: figures.get(f"{k}_ms") for k in ("p50", "p95", "p99")},
            }
        )
    return {
        "jobs": {"total": sum(by_status.values()), "by_status": by_status},
        "teachers": teachers,
        "throughput": {"bucket_s": bucket_s, "since": since, "points": points},
        "failures": [{"where": w, "kind": k, "count": n} for w, k, n in failures],
        "generated_at": datetime.now(UTC),
    }


@router.get("/api/runs/{run_id}/curve", dependencies=[Read])
def curve(request: Request, run_id: int) -> dict[str, Any]:
    from db.queries import training as q

    with Session(engine_of(request)) as session:
        run = q.get_run(session, run_id)
        if run is None:
            raise not_found(f"no training run {run_id}; list them with GET /api/runs")
        run_dir = Path(run.run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {"run_id": run_id, "points": [], "note": f"no metrics.jsonl under {run_dir} on the API host"}
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        rows.append(
            {"step": record.get("step"), "loss": record.get("loss"), "val_loss": record.get("val_loss")}
        )
    stride = max(1, -(-len(rows) // CURVE_POINTS))
    kept = rows[::stride]
    if rows and kept[-1] is not rows[-1]:
        kept.append(rows[-1])
    validation = [r for r in rows if r["val_loss"] is not None]  # few: keep them all
    return {"run_id": run_id, "points": kept, "validation": validation}
