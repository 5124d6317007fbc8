"""Generation jobs over HTTP: create (queued for workers), list, status, cancel, resume.

A job's status document is exactly `kpdd status JOB --json`'s.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from services.api.app import Page, Read, Write, engine_of, page, settings_of
from services.api.errors import ApiError, not_found

router = APIRouter(tags=["jobs"])


class JobBody(BaseModel):
    """The options of `kpdd generate`, as JSON."""

    model_config = ConfigDict(extra="forbid")

    corpus: str = Field(min_length=1, max_length=128, description="corpus name (see GET /api/corpora)")
    teachers: list[str] = Field(min_length=1, max_length=16, description="teacher specs, e.g. sim:gold")
    mode: Literal["cot", "pot", "both"] = "cot"
    split: str | None = Field(default=None, max_length=64)
    samples: int = Field(default=1, ge=1, le=1000)
    until_valid: int | None = Field(default=None, ge=1)
    max_attempts: int | None = Field(default=None, ge=1)
    stage_mode: Literal["single", "staged"] = "single"
    budget_usd: Decimal | None = Field(default=None, gt=0)
    limit: int | None = Field(default=None, ge=1)
    chunk_size: int = Field(default=16, ge=1, le=10_000)
    teacher_options: list[str] = Field(default_factory=list, description="OPTION=VALUE for every teacher")
    refresh: bool = Field(default=False, description="bypass the response cache and replace what it holds")
    reuse_any_options: bool = Field(default=False, description="reuse rationales made with other options")
    transport: Literal["online", "batch"] = Field(
        default="online", description="batch: every teacher through its provider's batch API"
    )


def _require_job(request: Request, job_id: int) -> None:
    from db.models import GenerationJob

    with Session(engine_of(request)) as session:
        if session.get(GenerationJob, job_id) is None:
            raise not_found(f"no generation job {job_id}; list jobs with GET /api/jobs")


def _dispatcher(request: Request) -> Any:
    from services.generation.dispatch import CeleryDispatcher

    broker = settings_of(request).broker_url
    if not broker:
        raise ApiError(409, "the API queues jobs for workers: set KPDD_BROKER_URL on the API and the workers")
    return CeleryDispatcher(broker)


@router.get("/jobs", dependencies=[Read])
def list_jobs(request: Request, paging: Annotated[Page, Depends(page)]) -> dict[str, Any]:
    from db.queries.listing import job_ids_page
    from services.generation.status import job_status

    engine = engine_of(request)
    with Session(engine) as session:
        ids, total = job_ids_page(session, paging.limit, paging.offset)
    return paging.wrap([job_status(engine, job_id).to_json() for job_id in ids], total)


@router.post("/jobs", status_code=201, dependencies=[Write])
def create_job(request: Request, body: JobBody) -> dict[str, Any]:
    from services.generation.jobs import submit_job
    from services.generation.params import GenerateParams, parse_modes
    from services.teachers.spec import parse_option_pairs, parse_spec

    broker = settings_of(request).broker_url
    if not broker:
        raise ApiError(409, "the API queues jobs for workers: set KPDD_BROKER_URL on the API and the workers")
    shared = parse_option_pairs(body.teacher_options)
    params = GenerateParams(
        corpus=body.corpus,
        split=body.split,
        teachers=[parse_spec(text, shared).to_text() for text in body.teachers],
        modes=parse_modes(body.mode),
        samples=body.samples,
        until_valid=body.until_valid,
        max_attempts=body.max_attempts,
        stage_mode=body.stage_mode,
        budget_usd=body.budget_usd,
        limit=body.limit,
        chunk_size=body.chunk_size,
        refresh=body.refresh,
        reuse_any_options=body.reuse_any_options,
        transport=body.transport,
    )
    created = submit_job(engine_of(request), params, broker)
    return {
        "job_id": created.job_id,
        "problems": created.total_problems,
        "chunks": len(created.chunks),
        "execution": "queued",
    }


@router.get("/jobs/{job_id}", dependencies=[Read])
def job_status(request: Request, job_id: int) -> dict[str, Any]:
    from services.generation.status import job_status as status

    _require_job(request, job_id)
    document: dict[str, Any] = status(engine_of(request), job_id).to_json()
    return document


@router.post("/jobs/{job_id}/cancel", dependencies=[Write])
def cancel_job(request: Request, job_id: int) -> dict[str, Any]:
    from services.errors import BadInputError
    from services.generation.jobs import cancel_job as cancel

    _require_job(request, job_id)
    try:
        stopped = cancel(engine_of(request), job_id)
    except BadInputError as exc:  # already ended
        raise ApiError(409, str(exc)) from None
    return {"job_id": job_id, "status": "cancelled", "problems_cancelled": stopped}


@router.post("/jobs/{job_id}/resume", dependencies=[Write])
def resume_job(request: Request, job_id: int) -> dict[str, Any]:
    from services.errors import BadInputError
    from services.generation.jobs import resumable_chunks

    _require_job(request, job_id)
    dispatcher = _dispatcher(request)
    try:
        try:
            chunks = resumable_chunks(engine_of(request), job_id)
        except BadInputError as exc:  # ended: nothing to resume
            raise ApiError(409, str(exc)) from None
        if chunks:
            dispatcher.enqueue(job_id, chunks)
    finally:
        dispatcher.close()
    return {"job_id": job_id, "requeued_chunks": chunks, "execution": "queued"}
