"""The streaming path on Postgres: a server-side cursor read ahead by a helper thread, Parquet in
fixed row groups, and no trace left when an export fails half-way."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from benchmarks.bench_export import populate
from db.engine import get_engine
from db.models import Snapshot
from services.export import snapshot as snapshot_module
from services.export.manifest import verify_snapshot
from services.export.query import STREAM_BATCH
from services.export.snapshot import export_snapshot
from services.export.spec import ExportSpec

PROBLEMS = 1_500  # 6,000 rationales: three fetch batches, six row groups


def test_export_streams_in_batches_and_row_groups(pg_url: str, tmp_path: Path, datasets_dir: Path) -> None:
    populate(pg_url, PROBLEMS)
    engine = get_engine(pg_url)
    assert PROBLEMS * 4 > 2 * STREAM_BATCH
    result = export_snapshot(engine, ExportSpec(row_group_size=1_000), tmp_path / "s", datasets_dir)
    assert result.manifest["counts"]["rows"] == PROBLEMS * 4
    data = pq.ParquetFile(tmp_path / "s/data/rationales/train.parquet")
    assert data.metadata.num_rows == PROBLEMS * 4
    assert [data.metadata.row_group(i).num_rows for i in range(data.num_row_groups)] == [1_000] * 6
    ids = data.read(columns=["problem_id", "sample_index", "mode"]).to_pylist()
    keys = [(r["problem_id"], r["mode"], r["sample_index"]) for r in ids]
    assert keys == sorted(keys)  # problem order, then the collation-free order within a problem
    assert verify_snapshot(tmp_path / "s").ok

    again = export_snapshot(engine, ExportSpec(row_group_size=1_000), tmp_path / "t", datasets_dir)
    assert again.snapshot_id == result.snapshot_id
    assert (tmp_path / "t/data/end_to_end/train.parquet").read_bytes() == (
        tmp_path / "s/data/end_to_end/train.parquet"
    ).read_bytes()


def test_a_failure_mid_stream_leaves_nothing_behind(
    pg_url: str, tmp_path: Path, datasets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(pg_url, PROBLEMS)
    engine = get_engine(pg_url)
    original = snapshot_module.SnapshotBuilder.add
    seen = {"batches": 0}

    # Batches hold whole problems, about STREAM_BATCH rows: fail in the second of four.
    def failing_add(self: snapshot_module.SnapshotBuilder, batch: pa.Table) -> None:
        seen["batches"] += 1
        if seen["batches"] == 2:
            raise OSError("disk full (simulated)")
        original(self, batch)

    monkeypatch.setattr(snapshot_module.SnapshotBuilder, "add", failing_add)
    with pytest.raises(OSError, match="disk full"):
        export_snapshot(engine, ExportSpec(row_group_size=1_000), tmp_path / "s", datasets_dir)
    assert list(tmp_path.iterdir()) == []  # neither the snapshot nor its temporary directory
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Snapshot)) == 0
        # The connection went back to the pool in a usable state (cursor closed, helper joined).
        assert session.execute(text("SELECT 1")).scalar() == 1
    monkeypatch.undo()
    assert (
        export_snapshot(engine, ExportSpec(), tmp_path / "s", datasets_dir).manifest["counts"]["rows"]
        == 6_000
    )
