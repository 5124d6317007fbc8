"""Creating, cancelling and resuming generation jobs (the Postgres side; queuing is `dispatch`).

A job is written in one transaction with one `job_problems` row per problem, one `job_chunks`
row per chunk (queued now when a broker will carry them, so that the reconciler queues them
again if the submitter dies before sending; never queued when they run in-process), and the
submitter's configuration that matters to results (`submitted_config`, see
`services.generation.deployment`).

Resuming re-queues every chunk with a pending problem except the ones a worker holds now (a live
lease): those are still being worked, and queuing them again would only be skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from db.models import JOB_TERMINAL_STATUSES, Corpus, GenerationJob, Problem
from db.queries.generation import add_job_problems, pending_chunks, state_counts, stop_pending
from db.queries.operations import add_job_chunks, db_now, leased_chunks
from services.config import get_settings
from services.errors import BadInputError
from services.generation.deployment import job_config
from services.generation.params import GenerateParams
from services.teachers.keys import check_key
from services.teachers.pricing import load_prices
from services.teachers.spec import TeacherSpec, parse_spec


@dataclass(slots=True)
class CreatedJob:
    job_id: int
    total_problems: int
    chunks: list[int]


def parse_teachers(params: GenerateParams) -> list[TeacherSpec]:
    """Every teacher spec, parsed and checked before anything is written: unknown options, a
    missing key, or (with a budget) a model without a price fail here."""
    specs = [parse_spec(text) for text in params.teachers]
    if params.transport == "batch":  # every teacher through its provider's batch API
        specs = [replace(spec, options=spec.options.model_copy(update={"batch": True})) for spec in specs]
    labels = [spec.label for spec in specs]
    if len(set(labels)) != len(labels):
        raise BadInputError("--teacher: the same provider:model is given twice")
    prices = load_prices(get_settings().prices_file)
    for spec in specs:
        check_key(spec.provider, spec.options.api_key_env, spec.label)
        if params.budget_usd is not None and prices.price_of(spec.provider, spec.model) is None:
            raise BadInputError(
                f"--budget-usd: {spec.label} has no price, so its cost cannot be bounded; add it "
                "to a price file named by KPDD_PRICES_FILE (see README, Teachers)"
            )
    return specs


def create_job(engine: Engine, params: GenerateParams, *, queued: bool | None = None) -> CreatedJob:
    """Record the job and one pending work item per problem, in one transaction. `queued`: its
    chunks go to a broker (default: when KPDD_BROKER_URL is set), so they are marked queued."""
    specs = parse_teachers(params)
    if queued is None:
        queued = get_settings().broker_url is not None
    with Session(engine) as session, session.begin():
        corpus = session.scalar(select(Corpus).where(Corpus.name == params.corpus))
        if corpus is None:
            names = ", ".join(session.scalars(select(Corpus.name).order_by(Corpus.name))) or "none yet"
            raise BadInputError(
                f"--corpus: no corpus named {params.corpus!r} (corpora: {names}); "
                "ingest it first with `kpdd ingest`"
            )
        if params.split is not None:
            has_split = session.scalar(
                select(Problem.id)
                .where(Problem.corpus_id == corpus.id, Problem.split == params.split)
                .limit(1)
            )
            if has_split is None:
                splits = ", ".join(
                    session.scalars(select(Problem.split).where(Problem.corpus_id == corpus.id).distinct())
                )
                raise BadInputError(
                    f"--split: corpus {params.corpus!r} has no split {params.split!r} "
                    f"(splits: {splits or 'none'})"
                )
        job = GenerationJob(
            corpus_id=corpus.id,
            split=params.split,
            teachers=[{"spec": spec.to_text(), "label": spec.label} for spec in specs],
            modes=params.modes,
            stage_mode=params.stage_mode,
            samples=params.samples,
            until_valid=params.until_valid,
            max_attempts=params.max_attempts,
            problem_limit=params.limit,
            chunk_size=params.chunk_size,
            budget_usd=params.budget_usd,
            params=params.to_json(),
            submitted_config=job_config(specs),
        )
        session.add(job)
        session.flush()
        total = add_job_problems(session, job.id, corpus.id, params.split, params.limit, params.chunk_size)
        if total == 0:
            raise BadInputError(f"--corpus: {params.corpus!r} has no problems to generate for")
        job.total_problems = total
        add_job_chunks(session, job.id, db_now(session) if queued else None)
        chunks = pending_chunks(session, job.id)
        return CreatedJob(job.id, total, chunks)


def load_job(session: Session, job_id: int) -> GenerationJob:
    job = session.get(GenerationJob, job_id)
    if job is None:
        raise BadInputError(f"no generation job {job_id}; list jobs with `kpdd status`")
    return job


def cancel_job(engine: Engine, job_id: int) -> int:
    """Stop a job: pending problems become `cancelled` (workers skip them). Returns how many."""
    with Session(engine) as session, session.begin():
        job = load_job(session, job_id)
        if job.status in JOB_TERMINAL_STATUSES:
            raise BadInputError(f"job {job_id} is already {job.status}; nothing to cancel")
        stopped = stop_pending(session, job_id, "cancelled", "cancelled by `kpdd cancel`")
        job.status = "cancelled"
        job.stop_reason = "cancelled by `kpdd cancel`"
        job.finished_at = datetime.now(UTC)
        return stopped


def resumable_chunks(engine: Engine, job_id: int) -> list[int]:
    """The chunks to queue again: every chunk with a pending problem that no worker holds now
    (a live lease: it is being worked). A cancelled or finished job has none; a job stopped by
    its budget is not resumed (raise the budget with a new job)."""
    with Session(engine) as session, session.begin():
        job = load_job(session, job_id)
        if job.status in JOB_TERMINAL_STATUSES:
            raise BadInputError(f"job {job_id} is {job.status}; there is nothing to resume")
        counts = state_counts(session, job_id)
        if not counts.get("pending"):
            return []
        held = leased_chunks(session, job_id, db_now(session))
        return [chunk for chunk in pending_chunks(session, job_id) if chunk not in held]


def submit_job(engine: Engine, params: GenerateParams, broker_url: str) -> CreatedJob:
    """`kpdd generate` and `POST /api/jobs` with a broker: check the broker (a down or
    misconfigured one writes no job), record the job, queue its chunks. EnqueueFailed when some
    chunks could not be sent (they are recorded; the reconciler or `kpdd resume` sends them)."""
    from services.generation.dispatch import CeleryDispatcher, check_broker

    check_broker(broker_url)
    created = create_job(engine, params, queued=True)
    dispatcher = CeleryDispatcher(broker_url, engine=engine)
    try:
        dispatcher.enqueue(created.job_id, created.chunks)
    finally:
        dispatcher.close()
    return created
