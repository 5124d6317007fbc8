"""Training runs over HTTP: submit one (queued on the `training` queue for `kpdd worker --queues
training`; never run in the API process), list runs with their metrics and evaluation results,
show and cancel one. A run's document is `kpdd run show RUN --json`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from services.api.app import Page, Read, Write, engine_of, page, settings_of
from services.api.errors import ApiError, not_found

router = APIRouter(tags=["runs"])
CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


class RunBody(BaseModel):
    """`kpdd train --submit`'s options, as JSON."""

    model_config = ConfigDict(extra="forbid")

    snapshot: str = Field(description="snapshot record id or snapshot id (see GET /api/snapshots)")
    config: str = Field(description="a config name of training/configs, e.g. tiny-llama")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides, as --set")
    num_gpus: int = Field(default=1, ge=1, le=64)
    eval_datasets: list[str] = Field(default_factory=list)
    eval_limit: int | None = Field(default=None, ge=1)


def _run_document(session: Session, run: Any) -> dict[str, Any]:
    from db.queries import training as q
    from services.training.runs import run_to_json

    evaluations = q.evaluations_of_runs(session, [run.id]).get(run.id, [])
    document = run_to_json(run, evaluations)
    document["evaluation_results"] = [
        {"evaluation_id": e.id, "state": e.state, "results": e.results} for e in evaluations
    ]
    return document


@router.get("/runs", dependencies=[Read])
def list_runs(request: Request, paging: Annotated[Page, Depends(page)]) -> dict[str, Any]:
    from db.queries.listing import runs_page

    with Session(engine_of(request)) as session:
        runs, total = runs_page(session, paging.limit, paging.offset)
        items = [_run_document(session, run) for run in runs]
    return paging.wrap(items, total)


@router.get("/runs/{run_id}", dependencies=[Read])
def show_run(request: Request, run_id: int) -> dict[str, Any]:
    from db.queries import training as q

    with Session(engine_of(request)) as session:
        run = q.get_run(session, run_id)
        if run is None:
            raise not_found(f"no training run {run_id}; list them with GET /api/runs")
        return _run_document(session, run)


@router.post("/runs", status_code=201, dependencies=[Write])
def submit_run(request: Request, body: RunBody) -> dict[str, Any]:
    from db.queries.listing import snapshot_by_key
    from services.training.runs import TrainRequest, submit_new_run

    settings = settings_of(request)
    if not settings.broker_url:
        raise ApiError(409, "the API queues runs for training workers: set KPDD_BROKER_URL")
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    if body.config not in names:
        raise ApiError(422, f"config: {body.config!r} is not one of {', '.join(names)}")
    with Session(engine_of(request)) as session:
        record = snapshot_by_key(session, body.snapshot)
    if record is None:
        raise not_found(f"snapshot: no snapshot {body.snapshot!r}; list them with GET /api/snapshots")
    train = TrainRequest(
        snapshot=Path(record.path),
        config=CONFIGS / f"{body.config}.yaml",
        overrides=body.overrides,
        num_gpus=body.num_gpus,
        eval_datasets=body.eval_datasets,
        eval_limit=body.eval_limit,
    )
    run_id = submit_new_run(
        engine_of(request), train, data_dir=settings.data_dir, broker_url=settings.broker_url
    )
    return {"run_id": run_id, "state": "queued"}


@router.post("/runs/{run_id}/cancel", dependencies=[Write])
def cancel_run(request: Request, run_id: int) -> dict[str, Any]:
    from services.training.runs import cancel_run as cancel

    if not cancel(engine_of(request), run_id):
        raise ApiError(409, f"run {run_id} has already ended")
    return {"run_id": run_id, "state": "cancelled"}
