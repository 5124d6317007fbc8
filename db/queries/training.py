"""Queries on training runs and evaluations. The caller owns the transaction.

State changes go through `set_run_state`, whose `UPDATE ... WHERE state IN (...)` makes each
transition atomic: a run that another process already ended is never moved back to `running`,
and a queued run is claimed by one worker only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import RUN_LIVE_STATES, RUN_TERMINAL_STATES, Evaluation, TrainingRun


def add_run(session: Session, **fields: Any) -> TrainingRun:
    """Record a new run (flushed: its id is set). `fields` are `TrainingRun` columns."""
    fields.setdefault("metrics", {})
    fields.setdefault("overrides", [])
    fields.setdefault("eval_datasets", [])
    run = TrainingRun(**fields)
    session.add(run)
    session.flush()
    session.refresh(run)
    return run


def get_run(session: Session, run_id: int) -> TrainingRun | None:
    return session.get(TrainingRun, run_id)


def list_runs(session: Session, limit: int | None = None) -> list[TrainingRun]:
    """Runs, newest first."""
    query = select(TrainingRun).order_by(TrainingRun.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def update_run(session: Session, run_id: int, **fields: Any) -> None:
    """Set columns of a run whatever its state (progress, metrics, configs)."""
    session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(**fields))


def set_run_state(
    session: Session,
    run_id: int,
    state: str,
    *,
    reason: str | None = None,
    only_from: Sequence[str] = RUN_LIVE_STATES,
    **fields: Any,
) -> bool:
    """Move a run to `state` if it is in one of `only_from`; False when it was not (another
    process ended or claimed it first). A terminal state stamps `finished_at`."""
    values: dict[str, Any] = {"state": state, "state_reason": reason, **fields}
    if state in RUN_TERMINAL_STATES:
        values["finished_at"] = func.now()
    result = session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.state.in_(list(only_from)))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def heartbeat(session: Session, run_id: int, now: datetime, **fields: Any) -> None:
    """Renew a live run's heartbeat, with any progress columns."""
    session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.state.in_(RUN_LIVE_STATES))
        .values(heartbeat_at=now, **fields)
        .execution_options(synchronize_session=False)
    )


def fail_stale_runs(session: Session, now: datetime, timeout_s: float) -> list[int]:
    """Mark failed every `preparing` or `running` run whose supervisor has sent no heartbeat for
    `timeout_s` (it was killed, or its host went away); returns their ids. Queued runs wait for
    a worker and are left alone."""
    cutoff = now - timedelta(seconds=timeout_s)
    stale = list(
        session.scalars(
            select(TrainingRun.id).where(
                TrainingRun.state.in_(("preparing", "running")),
                func.coalesce(TrainingRun.heartbeat_at, TrainingRun.created_at) < cutoff,
            )
        )
    )
    for run_id in stale:
        run = session.get(TrainingRun, run_id)
        where = f" on {run.worker_host}" if run is not None and run.worker_host else ""
        set_run_state(
            session,
            run_id,
            "failed",
            reason=f"supervisor lost: no heartbeat for over {timeout_s:.0f} s (its process{where} "
            "was killed or its host went away); resume with `kpdd train ... --resume auto`",
            only_from=("preparing", "running"),
        )
    return stale


def add_evaluation(session: Session, **fields: Any) -> Evaluation:
    fields.setdefault("results", {})
    evaluation = Evaluation(**fields)
    session.add(evaluation)
    session.flush()
    session.refresh(evaluation)
    return evaluation


def finish_evaluation(
    session: Session,
    evaluation_id: int,
    state: str,
    *,
    results: dict[str, Any] | None = None,
    accuracy: float | None = None,
    reason: str | None = None,
) -> None:
    values: dict[str, Any] = {"state": state, "state_reason": reason, "finished_at": func.now()}
    if results is not None:
        values["results"] = results
        values["accuracy"] = accuracy
    session.execute(update(Evaluation).where(Evaluation.id == evaluation_id).values(**values))


def get_evaluation(session: Session, evaluation_id: int) -> Evaluation | None:
    return session.get(Evaluation, evaluation_id)


def evaluations_of_runs(session: Session, run_ids: Iterable[int]) -> dict[int, list[Evaluation]]:
    """Each run's evaluations, oldest first."""
    ids = list(run_ids)
    out: dict[int, list[Evaluation]] = {run_id: [] for run_id in ids}
    if not ids:
        return out
    query = select(Evaluation).where(Evaluation.run_id.in_(ids)).order_by(Evaluation.id)
    for evaluation in session.scalars(query):
        assert evaluation.run_id is not None
        out[evaluation.run_id].append(evaluation)
    return out


def list_evaluations(session: Session, limit: int | None = None) -> list[Evaluation]:
    query = select(Evaluation).order_by(Evaluation.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def update_evaluation_dir(session: Session, evaluation_id: int, out_dir: str) -> None:
    session.execute(update(Evaluation).where(Evaluation.id == evaluation_id).values(out_dir=out_dir))
