"""`kpdd export`: stream the selected rationales into an immutable snapshot directory.

Steps, in one read transaction (REPEATABLE READ on Postgres): check the selection (unknown jobs,
corpora, teachers are bad input), count what is available, load the evaluation sets, then stream
the rationales problem by problem through decontamination, deduplication and the cap, assign the
problem's split, and write the rows. Then the dataset card and the manifest are written, and the
directory is published and recorded.

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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from db.queries.snapshots import add_snapshot
from services.errors import BadInputError
from services.export.decontam import Decontaminator, DecontamReport, resolve_eval_sets
from services.export.filters import FilterCounts, problem_filter
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
)
from services.export.query import (
    JobScope,
    RationaleRow,
    available_by_verdict,
    check_selection,
    stream_problem_groups,
)
from services.export.spec import ExportSpec, snapshot_id
from services.export.splits import split_of
from services.export.tasks import cascade_rows, end_to_end_rows
from services.export.writer import LAYOUT_TABLES, TableWriter, WrittenFile, open_writer

# (split, corpus, source split, teacher, mode, verdict, prompt version) -> rows
TallyKey = tuple[str, str, str, str, str, str, str]


def software_versions() -> dict[str, str]:
    """Versions that decide the files' bytes (pyarrow writes its version into every file)."""
    try:
        kpdd = metadata.version("kpdd")
    except metadata.PackageNotFoundError:
        kpdd = "unknown"
    return {"kpdd": kpdd, "pyarrow": pa.__version__, "orjson": orjson.__version__}


@dataclass(slots=True)
class SnapshotBuilder:
    """Takes one problem's rationales at a time and writes what survives the filters."""

    spec: ExportSpec
    root: Path
    decontaminator: Decontaminator | None
    decontam: DecontamReport
    filter_counts: FilterCounts = field(default_factory=FilterCounts)
    selected: int = 0
    tally: Counter[TallyKey] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    writers: dict[str, dict[str, TableWriter]] = field(default_factory=dict)
    _per_problem: Callable[[list[RationaleRow]], list[RationaleRow]] | None = None

    def __post_init__(self) -> None:
        spec = self.spec
        self._per_problem = problem_filter(
            spec.dedupe, spec.near_duplicate_threshold, spec.max_per_problem, self.filter_counts
        )
        self.writers = {
            split: {
                table: open_writer(self.root, table, split, spec.format, spec.row_group_size)
                for table in LAYOUT_TABLES[spec.layout]
            }
            for split in spec.splits
        }

    def add(self, group: list[RationaleRow]) -> None:
        self.selected += len(group)
        first = group[0]
        if self.decontaminator is not None:
            self.decontam.checked_problems += 1
            match = self.decontaminator.check(first.question)
            if match is not None:
                self.decontam.dropped_rationales += len(group)
                self.decontam.dropped.append(
                    {
                        "problem_id": first.problem_id,
                        "corpus": first.corpus,
                        "source_split": first.source_split,
                        "source_id": first.source_id,
                        "rationales": len(group),
                        "dataset": match.dataset,
                        "eval_id": match.eval_id,
                        "overlap": round(match.overlap, 4),
                        "matches": match.matches,
                    }
                )
                return
        if self._per_problem is not None:
            group = self._per_problem(group)
        split = split_of(first.question, self.spec.split_seed, self.spec.val_fraction)
        self.problems[split] += 1
        writers = self.writers[split]
        tally = self.tally
        for row in group:
            tally[
                (split, row.corpus, row.source_split, row.teacher, row.mode, row.verdict, row.prompt_version)
            ] += 1
        writers["rationales"].extend([(*row, split) for row in group])
        if self.spec.layout == "end-to-end":
            writers["end_to_end"].extend(end_to_end_rows(group, split))
        else:
            for table, task_rows in cascade_rows(group, split).items():
                writers[table].extend(task_rows)

    def close(self) -> list[WrittenFile]:
        return [w.close() for split in self.spec.splits for w in self.writers[split].values()]

    def counts_json(self) -> dict[str, Any]:
        def marginal(*positions: int) -> dict[str, int]:
            out: Counter[str] = Counter()
            for key, n in self.tally.items():
                out["/".join(key[p] for p in positions)] += n
            return dict(sorted(out.items()))

        by_split_rows = marginal(0)
        return {
            "rows": sum(self.tally.values()),
            "problems": sum(self.problems.values()),
            "by_split": {
                s: {"rows": by_split_rows.get(s, 0), "problems": self.problems.get(s, 0)}
                for s in self.spec.splits
            },
            "by_corpus": marginal(1),
            "by_corpus_split": marginal(1, 2),
            "by_teacher": marginal(3),
            "by_mode": marginal(4),
            "by_verdict": marginal(5),
        }

    def prompt_versions(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for key, n in self.tally.items():
            out[key[6]] += n
        return dict(sorted(out.items()))


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
    groups = stream_problem_groups(conn, spec, jobs)
    try:
        for group in groups:
            builder.add(group)
    finally:
        groups.close()  # stop reading before the transaction ends, even on an error
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
