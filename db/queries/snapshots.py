"""Queries on dataset snapshots. The caller owns the transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Snapshot


def add_snapshot(
    session: Session,
    *,
    snapshot_id: str,
    path: str,
    layout: str,
    format_name: str,
    rows: int,
    spec: dict[str, Any],
    counts: dict[str, Any],
    manifest_sha256: str,
) -> Snapshot:
    """Record a written snapshot; returns the row (flushed, so its id and created_at are set)."""
    snapshot = Snapshot(
        snapshot_id=snapshot_id,
        path=path,
        layout=layout,
        format=format_name,
        rows=rows,
        spec=spec,
        counts=counts,
        manifest_sha256=manifest_sha256,
    )
    session.add(snapshot)
    session.flush()
    session.refresh(snapshot)
    return snapshot


def list_snapshots(session: Session) -> list[Snapshot]:
    """Every recorded snapshot, newest first."""
    return list(session.scalars(select(Snapshot).order_by(Snapshot.created_at.desc(), Snapshot.id.desc())))
