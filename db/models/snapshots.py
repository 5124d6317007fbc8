"""Dataset snapshots: one row per `kpdd export` that completed.

A snapshot is a directory of data files, `manifest.json` and a dataset card; the directory is the
artefact, this row is its record. `snapshot_id` is content-derived (the filter specification and
the sha256 of every data file), so exporting the same database state with the same filters twice
gives the same id, in two rows with two paths: it is indexed, not unique. `manifest_sha256` is the
hash of the manifest as written, so a later reader can tell whether the manifest was replaced.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import Base, BigIntPK, TimestampMixin


class Snapshot(TimestampMixin, Base):
    __tablename__ = "snapshots"
    __table_args__ = (Index(None, "snapshot_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    snapshot_id: Mapped[str] = mapped_column(String(64))
    # Absolute path of the directory when it was written (it may have moved since).
    path: Mapped[str] = mapped_column(Text)
    layout: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(16))
    rows: Mapped[int] = mapped_column(BigInteger)
    # The canonical filter specification, exactly as in the manifest.
    spec: Mapped[dict[str, Any]] = mapped_column()
    # Counts by split, corpus, teacher, mode and verdict, and what each filter dropped.
    counts: Mapped[dict[str, Any]] = mapped_column()
    manifest_sha256: Mapped[str] = mapped_column(String(64))


__all__ = ["Snapshot"]
