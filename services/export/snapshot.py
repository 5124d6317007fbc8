"""`kpdd export`: stream the selected rationales into an immutable snapshot directory.

Steps, in one read transaction (REPEATABLE READ on Postgres): check the selection (unknown jobs,
corpora, teachers are bad input), count what is available, load the evaluation sets, then stream
the rationales in Arrow batches of whole problems through decontamination, deduplication and
the cap (each one problem at a time), assign each problem's split, and write the rows. Then the
dataset card and the manifest are written, and the directory is published and recorded.

Atomicity: everything is written into a hidden temporary directory next to `--out`
(`.NAME.partial-XXXX`), fsynced, and renamed to `--out` in one `rename(2)` inside the database
transaction that records it. A crash or an error leaves no half snapshot at `--out` (the
temporary directory is removed on any error; a hard kill can leave a `.partial-` directory,
which is never mistaken for a snapshot). `--out` must not exist or be an empty directory: a
snapshot is never overwritten.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from db.queries.snapshots import add_snapshot
from services.errors import BadInputError
from services.export.builder import SnapshotBuilder
from services.export.decontam import Decontaminator, DecontamReport, resolve_eval_sets
from services.export.manifest import (
    CARD,
    FORMAT_VERSION,
    MANIFEST,
    data_hashes,
    dump_json,
    file_sha256,
    manifest_digest,
    render_card,
    schema_json,
    student_inputs_json,
)
from services.export.query import JobScope, available_by_verdict, check_selection, stream_batches
from services.export.spec import ExportSpec, snapshot_id
from services.export.writer import LAYOUT_TABLES


def software_versions() -> dict[str, str]:
    """Versions that decide the files' bytes (pyarrow writes its version into every file)."""
    try:
        kpdd = metadata.version("kpdd")
    except metadata.PackageNotFoundError:
        kpdd = "unknown"
    return {"kpdd": kpdd, "pyarrow": pa.__version__, "orjson": orjson.__version__}


@dataclass(slots=True)
class ExportResult:
    snapshot_id: str
    path: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    record_id: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        """What `kpdd export --json` prints: the manifest without its long lists."""
        decontam = dict(self.manifest["decontamination"])
        decontam.pop("dropped", None)
        return {
            "snapshot_id": self.snapshot_id,
            "path": str(self.path),
            "record_id": self.record_id,
            "manifest_sha256": self.manifest_sha256,
            "spec": self.manifest["spec"],
            "counts": self.manifest["counts"],
            "filters": self.manifest["filters"],
            "prompt_versions": self.manifest["prompt_versions"],
            "decontamination": decontam,
            "files": [{k: f[k] for k in ("path", "rows", "sha256")} for f in self.manifest["files"]],
            "seconds": round(self.seconds, 3),
        }


def check_out(out: Path) -> None:
    """`--out` must be new, or an empty directory: a snapshot is never overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(
            f"--out {out}: already exists and is not empty; snapshots are immutable, choose a new directory"
        )


def _build(conn: Connection, spec: ExportSpec, root: Path, datasets_dir: Path) -> dict[str, Any]:
    jobs: list[JobScope] = check_selection(conn, spec)
    available = available_by_verdict(conn, spec, jobs)
    matching = sum(available.values()) if spec.verdict == "all" else available.get("valid", 0)
    if matching == 0:
        shown = ", ".join(f"{k} {v}" for k, v in available.items()) or "none"
        raise BadInputError(
            f"no rationales match these filters (available by verdict: {shown}); "
            "check --job/--corpus/--teacher/--mode, or pass --verdict all"
        )
    eval_sets = resolve_eval_sets(spec.decontaminate, datasets_dir, conn)
    report = DecontamReport(spec.decontam_ngram, spec.decontam_threshold, [s.describe() for s in eval_sets])
    decontaminator = (
        Decontaminator(eval_sets, spec.decontam_ngram, spec.decontam_threshold) if eval_sets else None
    )
    builder = SnapshotBuilder(spec, root, decontaminator, report)
    batches = stream_batches(conn, spec, jobs)
    try:
        for batch in batches:
            builder.add(batch)
    finally:
        batches.close()  # stop reading before the transaction ends, even on an error
        written = builder.close()

    files: list[dict[str, Any]] = []
    for w in written:
        path = root / w.path
        files.append(
            {
                "path": w.path,
                "role": "data",
                "table": w.table,
                "split": w.split,
                "rows": w.rows,
                "bytes": path.stat().st_size,
                "sha256": file_sha256(path),
            }
        )
    spec_json = spec.to_json()
    counts = builder.counts_json()
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": "kpdd-snapshot",
        "snapshot_id": snapshot_id(spec_json, data_hashes(files)),
        "spec": spec_json,
        "counts": counts,
        "filters": {
            "available_by_verdict": available,
            "selected": builder.selected,
            "decontaminated": report.dropped_rationales,
            **builder.filter_counts.to_json(),
            "exported": counts["rows"],
        },
        "prompt_versions": builder.prompt_versions(),
        "decontamination": report.to_json(),
        "student_inputs": student_inputs_json(spec.layout),
        "schema": schema_json(LAYOUT_TABLES[spec.layout]),
        "software": software_versions(),
        "files": files,
    }
    card = render_card(manifest).encode()
    (root / CARD).write_bytes(card)
    files.append(
        {
            "path": CARD,
            "role": "card",
            "table": None,
            "split": None,
            "rows": None,
            "bytes": len(card),
            "sha256": hashlib.sha256(card).hexdigest(),
        }
    )
    manifest["manifest_digest"] = manifest_digest(manifest)
    return manifest


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def export_snapshot(engine: Engine, spec: ExportSpec, out: Path, datasets_dir: Path) -> ExportResult:
    """Write the snapshot `spec` selects to `out` and record it; see the module docstring."""
    start = time.perf_counter()
    out = Path(os.path.abspath(out))
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    published = False
    try:
        os.chmod(tmp, 0o755)
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                manifest = _build(conn, spec, tmp, datasets_dir)
        manifest_bytes = dump_json(manifest)
        (tmp / MANIFEST).write_bytes(manifest_bytes)
        manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
        _fsync_tree(tmp)
        with Session(engine) as session, session.begin():
            record = add_snapshot(
                session,
                snapshot_id=manifest["snapshot_id"],
                path=str(out),
                layout=spec.layout,
                format_name=spec.format,
                rows=manifest["counts"]["rows"],
                spec=manifest["spec"],
                counts={"counts": manifest["counts"], "filters": manifest["filters"]},
                manifest_sha256=manifest_sha,
            )
            record_id = record.id
            try:
                os.rename(tmp, out)
            except OSError as exc:
                raise BadInputError(
                    f"--out {out}: cannot publish the snapshot there ({exc.strerror}); "
                    "it must not exist or be an empty directory"
                ) from None
            published = True
    except BaseException:
        if published:  # the record did not commit: take the directory back
            os.rename(out, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(
        manifest["snapshot_id"], out, manifest, manifest_sha, record_id, time.perf_counter() - start
    )


__all__ = ["ExportResult", "SnapshotBuilder", "check_out", "export_snapshot", "software_versions"]
