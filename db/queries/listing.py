"""Paged listings for the API and dashboard: one page of rows and the total, newest first.
The caller owns the transaction."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Corpus, GenerationJob, Snapshot, TrainingRun

T = TypeVar("T")


def _page(session: Session, model: Any, limit: int, offset: int) -> tuple[list[Any], int]:
    total = int(session.scalar(select(func.count()).select_from(model)) or 0)
    rows = list(session.scalars(select(model).order_by(model.id.desc()).limit(limit).offset(offset)))
    return rows, total


def job_ids_page(session: Session, limit: int, offset: int) -> tuple[list[int], int]:
    total = int(session.scalar(select(func.count()).select_from(GenerationJob)) or 0)
    ids = session.scalars(
        select(GenerationJob.id).order_by(GenerationJob.id.desc()).limit(limit).offset(offset)
    )
    return [int(i) for i in ids], total


def snapshots_page(session: Session, limit: int, offset: int) -> tuple[list[Snapshot], int]:
    return _page(session, Snapshot, limit, offset)


def runs_page(session: Session, limit: int, offset: int) -> tuple[list[TrainingRun], int]:
    return _page(session, TrainingRun, limit, offset)


def snapshot_by_key(session: Session, key: str) -> Snapshot | None:
    """A snapshot by its record id (digits), its content id (`snapshot_id`) or its folder's name
    (the newest one, when several folders share it)."""
    if key.isdigit():
        found = session.get(Snapshot, int(key))
        if found is not None:
            return found
    by_id = session.scalars(select(Snapshot).where(Snapshot.snapshot_id == key).limit(1)).first()
    if by_id is not None:
        return by_id
    folders = select(Snapshot).where(Snapshot.path.endswith("/" + key)).order_by(Snapshot.id.desc()).limit(1)
    return session.scalars(folders).first()


def corpus_exists(session: Session, name: str) -> bool:
    return session.scalar(select(Corpus.id).where(Corpus.name == name)) is not None
