"""Snapshots over HTTP: export one (written under `KPDD_DATA_DIR/snapshots/NAME`), list them, read
a manifest and download the snapshot's files. Only files the manifest lists can be downloaded."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from services.api.app import Page, Read, Write, engine_of, page, settings_of
from services.api.errors import ApiError, not_found

router = APIRouter(tags=["snapshots"])
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SnapshotBody(BaseModel):
    """The filters of `kpdd export`, as JSON; `name` is the snapshot's folder."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="folder name under KPDD_DATA_DIR/snapshots (letters, digits, . _ -)")
    jobs: list[int] = Field(default_factory=list)
    corpora: list[str] = Field(default_factory=list)
    teachers: list[str] = Field(default_factory=list)
    mode: Literal["cot", "pot", "both"] = "both"
    verdict: Literal["valid", "all"] = "valid"
    max_per_problem: int | None = Field(default=None, ge=1)
    dedupe: bool = False
    decontaminate: list[str] = Field(default_factory=list)
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    format: Literal["parquet", "jsonl"] = "parquet"
    layout: Literal["end-to-end", "two-stage", "cascade"] = "end-to-end"


def snapshot_json(record: Any) -> dict[str, Any]:
    return {
        "record_id": record.id,
        "snapshot_id": record.snapshot_id,
        "path": record.path,
        "layout": record.layout,
        "format": record.format,
        "rows": record.rows,
        "counts": record.counts,
        "created_at": record.created_at,
    }


def _record(request: Request, key: str) -> Any:
    from db.queries.listing import snapshot_by_key

    with Session(engine_of(request)) as session:
        record = snapshot_by_key(session, key)
    if record is None:
        raise not_found(f"no snapshot {key!r}; list them with GET /api/snapshots")
    return record


@router.get("/snapshots", dependencies=[Read])
def list_snapshots(request: Request, paging: Annotated[Page, Depends(page)]) -> dict[str, Any]:
    from db.queries.listing import snapshots_page

    with Session(engine_of(request)) as session:
        records, total = snapshots_page(session, paging.limit, paging.offset)
        items = [snapshot_json(r) for r in records]
    return paging.wrap(items, total)


@router.post("/snapshots", status_code=201, dependencies=[Write])
def create_snapshot(request: Request, body: SnapshotBody) -> dict[str, Any]:
    from services.export.snapshot import check_out, export_snapshot
    from services.export.spec import ExportSpec, parse_modes

    if not _NAME.match(body.name):
        raise ApiError(422, f"name: {body.name!r} must be 1-128 letters, digits, '.', '_' or '-'")
    settings = settings_of(request)
    out = settings.data_dir / "snapshots" / body.name
    if out.exists():
        raise ApiError(409, f"name: a snapshot folder {body.name!r} already exists; choose another name")
    spec = ExportSpec(
        jobs=tuple(body.jobs),
        corpora=tuple(body.corpora),
        teachers=tuple(body.teachers),
        modes=parse_modes(body.mode),
        verdict=body.verdict,
        max_per_problem=body.max_per_problem,
        dedupe=body.dedupe,
        decontaminate=tuple(body.decontaminate),
        val_fraction=body.val_fraction,
        format=body.format,
        layout=body.layout,
    )
    check_out(out)
    result = export_snapshot(engine_of(request), spec, out, settings.datasets_dir)
    summary: dict[str, Any] = result.summary()
    return summary


@router.get("/snapshots/{key}", dependencies=[Read])
def show_snapshot(request: Request, key: str) -> dict[str, Any]:
    import json

    from services.export.manifest import MANIFEST

    record = _record(request, key)
    manifest_path = Path(record.path) / MANIFEST
    document = snapshot_json(record)
    document["manifest"] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    return document


@router.get("/snapshots/{key}/files/{name:path}", dependencies=[Read])
def download_file(request: Request, key: str, name: str) -> FileResponse:
    import json

    from services.export.manifest import MANIFEST

    record = _record(request, key)
    root = Path(record.path).resolve()
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise ApiError(409, f"snapshot {key!r}: its folder {record.path} has no manifest (moved or deleted?)")
    listed = {f["path"] for f in json.loads(manifest.read_text())["files"]} | {MANIFEST}
    if name not in listed:
        raise not_found(f"snapshot {key!r} has no file {name!r}; its files: {', '.join(sorted(listed))}")
    target = (root / name).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise not_found(f"snapshot {key!r}: file {name!r} is missing from {record.path}")
    return FileResponse(target, filename=Path(name).name)
