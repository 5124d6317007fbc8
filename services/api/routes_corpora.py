"""Corpora over HTTP: list them, ingest an uploaded file or a file under the server's ingest root.

Uploads are the request body itself (`PUT /api/corpora/{name}/upload?format=gsm8k`), streamed to a
temporary file and refused with 413 as soon as they pass `KPDD_API_MAX_UPLOAD_MB` (or at once when
`Content-Length` says so), so an oversized upload never fills a disk. Server-side paths are
relative to `KPDD_API_INGEST_ROOT`; a path that resolves outside it (`..`, a symlink) is refused
with 403. Ingestion is one transaction: a bad record ends in 400 naming its line, nothing written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from services.api.app import Read, Write, engine_of, settings_of
from services.api.errors import ApiError

router = APIRouter(tags=["corpora"])

FormatQuery = Annotated[str, Query(description="corpus format: gsm8k, svamp, asdiv, multiarith, jsonl, csv")]


class IngestOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str | None = Field(default=None, max_length=64)
    question_field: str = "question"
    answer_field: str | None = "answer"
    id_field: str | None = None
    solution_field: str | None = None
    numeric_gold: bool = False
    skip_invalid: bool = False


class PathIngest(IngestOptions):
    format: str
    path: str = Field(min_length=1, description="file path relative to KPDD_API_INGEST_ROOT")


@router.get("/corpora", dependencies=[Read])
def list_corpora(request: Request) -> dict[str, Any]:
    from db.queries.corpora import corpus_summaries

    with Session(engine_of(request)) as session:
        summaries = corpus_summaries(session)
    items = [
        {
            "name": s.name,
            "format": s.format,
            "problems": s.total,
            "splits": s.splits,
            "gold_kinds": s.gold_kinds,
        }
        for s in summaries
    ]
    return {"items": items, "total": len(items)}


def _ingest(request: Request, name: str, fmt: str, path: Path, options: IngestOptions) -> dict[str, Any]:
    from services.corpora.base import LoaderOptions
    from services.corpora.ingest import ingest_corpus
    from services.corpora.registry import get_loader

    loader = get_loader(fmt)(
        path,
        LoaderOptions(
            question_field=options.question_field,
            answer_field=options.answer_field,
            id_field=options.id_field,
            solution_field=options.solution_field,
            numeric_gold=options.numeric_gold,
        ),
    )
    report = ingest_corpus(
        engine_of(request),
        loader,
        name,
        options.split,
        skip_invalid=options.skip_invalid,
        batch_size=settings_of(request).ingest_batch_size,
    )
    document: dict[str, Any] = report.to_json()
    return document


@router.put("/corpora/{name}/upload", status_code=201, dependencies=[Write])
async def upload_corpus(
    request: Request,
    name: str,
    format: FormatQuery,
    split: Annotated[str | None, Query(max_length=64)] = None,
    filename: Annotated[
        str | None, Query(description="original file name (its suffix picks the parser)")
    ] = None,
    skip_invalid: bool = False,
) -> dict[str, Any]:
    from fastapi.concurrency import run_in_threadpool

    limit = settings_of(request).api_max_upload_mb * 1024 * 1024
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the upload is {int(declared):,} bytes; this server takes at most {limit:,}")
    suffix = (
        Path(filename).suffix
        if filename
        else {"csv": ".csv", "svamp": ".json", "asdiv": ".xml"}.get(format, ".jsonl")
    )
    fd, tmp = tempfile.mkstemp(prefix="kpdd-upload-", suffix=suffix[:16])
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            async for block in request.stream():
                size += len(block)
                if size > limit:
                    raise ApiError(
                        413, f"the upload passed {limit:,} bytes (KPDD_API_MAX_UPLOAD_MB); nothing kept"
                    )
                out.write(block)
        if size == 0:
            raise ApiError(400, "the upload is empty: send the corpus file as the request body")
        options = IngestOptions(split=split, skip_invalid=skip_invalid)
        result: dict[str, Any] = await run_in_threadpool(_ingest, request, name, format, Path(tmp), options)
        return result
    finally:
        os.unlink(tmp)


@router.post("/corpora/{name}/ingest", status_code=201, dependencies=[Write])
def ingest_path(request: Request, name: str, body: PathIngest) -> dict[str, Any]:
    root = settings_of(request).api_ingest_root
    if root is None:
        raise ApiError(403, "server-side ingestion is off: set KPDD_API_INGEST_ROOT, or upload the file")
    base = root.resolve()
    target = (base / body.path).resolve()
    if not target.is_relative_to(base):
        raise ApiError(403, f"path: {body.path!r} is outside the ingest root")
    if not target.is_file():
        raise ApiError(404, f"path: no file {body.path!r} under the ingest root")
    return _ingest(request, name, body.format, target, body)
