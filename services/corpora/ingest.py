"""Ingestion: stream a corpus file into `problems`, in one transaction.

Contract:
- All or nothing. Any bad record (malformed line, missing field, unparseable gold, duplicate id,
  an id already ingested with different content) aborts the whole ingest with a `BadInputError`
  naming the file, line or record and field, and nothing is written. Text holding a NUL
  character (which Postgres cannot store and no math problem needs) and a gold answer longer than
  `MAX_GOLD_CHARS` characters are bad records too. With `skip_invalid=True`
  the good records are ingested and every skipped one is returned in the report with its reason.
- Idempotent. Re-ingesting the same file inserts nothing and reports every row as unchanged.
- Flat memory. Records are streamed from the loader and written as they come: with COPY on
  Postgres, with batched inserts on SQLite. A split that is still empty is written directly into
  `problems`; otherwise rows go through a temporary staging table and are merged with
  `INSERT ... SELECT ... ON CONFLICT DO NOTHING` after conflicting content has been checked.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from db.queries.corpora import count_split, get_or_create_corpus
from services.corpora.base import BadRecord, CorpusLoader, SourceProblem
from services.errors import BadInputError
from services.validation.numbers import normalise_gold

COLUMNS = (
    "corpus_id",
    "split",
    "source_id",
    "question",
    "gold_answer",
    "gold_kind",
    "gold_normalised",
    "worked_solution",
    "extra",
    "content_hash",
)
_MAX_SOURCE_ID = 256
# The longest gold answer taken. Real golds are a number or a short phrase; a longer one is a
# broken record (e.g. a whole solution in the answer field), and a number of thousands of digits
# cannot even be parsed by Python's int() (its 4,300-digit limit).
MAX_GOLD_CHARS = 1000


def _nul_field(problem: SourceProblem, loader: CorpusLoader) -> str | None:
    """The source's name of the first field of `problem` holding a NUL character, or None."""
    answer_field = loader.answer_field_name
    texts = (
        ("id", problem.source_id),
        (loader.options.question_field, problem.question),
        (answer_field, problem.gold_answer),
        (loader.options.solution_field or answer_field, problem.worked_solution),
    )
    for name, value in texts:
        if value is not None and "\x00" in value:
            return name
    for key, value in (problem.extra or {}).items():
        if b"\\u0000" in orjson.dumps(value):
            return str(key)
    return None


def content_hash(problem: SourceProblem) -> str:
    """sha256 over the question, the raw gold and the worked solution."""
    h = hashlib.sha256(problem.question.encode())
    h.update(b"\x1f")
    h.update((problem.gold_answer or "").encode())
    h.update(b"\x1f")
    h.update((problem.worked_solution or "").encode())
    return h.hexdigest()


@dataclass(slots=True)
class IngestReport:
    corpus: str
    split: str
    path: str
    read: int = 0
    inserted: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus,
            "split": self.split,
            "path": self.path,
            "read": self.read,
            "inserted": self.inserted,
            "unchanged": self.unchanged,
            "skipped": len(self.skipped),
            "skipped_records": self.skipped,
            "seconds": round(self.seconds, 3),
        }


class _RowSource:
    """Turns loader records into database rows, checking gold answers and duplicate ids."""

    def __init__(
        self, loader: CorpusLoader, corpus_id: int, split: str, report: IngestReport, skip_invalid: bool
    ) -> None:
        self.loader = loader
        self.corpus_id = corpus_id
        self.split = split
        self.report = report
        self.skip_invalid = skip_invalid
        self.first_seen: dict[str, str] = {}  # id -> location, where ids come from the file

    def reject(self, bad: BadRecord) -> None:
        message = bad.describe(self.loader.path)
        if not self.skip_invalid:
            raise BadInputError(
                f"{message}; nothing was ingested (fix the record, or pass --skip-invalid "
                "to ingest the good records and report the bad ones)"
            )
        self.report.skipped.append(message)

    def rows(self) -> Iterator[tuple[Any, ...]]:
        track_ids = not self.loader.ids_are_positions
        numeric = self.loader.numeric_gold
        for item in self.loader.iter_problems():
            self.report.read += 1
            if isinstance(item, BadRecord):
                self.reject(item)
                continue
            if len(item.source_id) > _MAX_SOURCE_ID:
                self.reject(BadRecord(item.location, "id", f"longer than {_MAX_SOURCE_ID} characters"))
                continue
            if track_ids:
                first = self.first_seen.get(item.source_id)
                if first is not None:
                    self.reject(
                        BadRecord(item.location, "id", f"duplicate id {item.source_id!r} (first at {first})")
                    )
                    continue
                self.first_seen[item.source_id] = item.location
            nul_field = _nul_field(item, self.loader)
            if nul_field is not None:
                self.reject(
                    BadRecord(item.location, nul_field, "contains a NUL character (\\u0000); remove it")
                )
                continue
            if item.gold_answer is not None and len(item.gold_answer) > MAX_GOLD_CHARS:
                self.reject(
                    BadRecord(
                        item.location,
                        self.loader.answer_field_name,
                        f"gold answer of {len(item.gold_answer):,} characters is longer than the "
                        f"{MAX_GOLD_CHARS:,} allowed; a gold answer is a number or a short phrase",
                    )
                )
                continue
            gold = normalise_gold(item.gold_answer)
            if numeric and gold.kind != "number":
                self.reject(
                    BadRecord(
                        item.location,
                        self.loader.answer_field_name,
                        f"gold answer {item.gold_answer!r} is not a number",
                    )
                )
                continue
            yield (
                self.corpus_id,
                self.split,
                item.source_id,
                item.question,
                item.gold_answer,
                gold.kind,
                gold.value,
                item.worked_solution,
                orjson.dumps(item.extra).decode() if item.extra else None,
                content_hash(item),
            )

    def where(self, source_id: str) -> str:
        return self.first_seen.get(source_id, f"record {source_id}")


def _batches(rows: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_rows(conn: Connection, table: str, rows: Iterable[tuple[Any, ...]], batch_size: int) -> None:
    cols = ", ".join(COLUMNS)
    if conn.dialect.name == "postgresql":
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    placeholders = ", ".join("?" for _ in COLUMNS)
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    for batch in _batches(rows, batch_size):
        cursor.executemany(f"INSERT INTO {table} ({cols}) VALUES ({placeholders})", batch)


def _create_stage(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("CREATE TEMP TABLE ingest_stage (LIKE problems INCLUDING DEFAULTS) ON COMMIT DROP"))
        conn.execute(text("ALTER TABLE ingest_stage DROP COLUMN id, DROP COLUMN created_at"))
    else:
        conn.execute(text("DROP TABLE IF EXISTS temp.ingest_stage"))
        conn.execute(
            text("CREATE TEMP TABLE ingest_stage AS SELECT " + ", ".join(COLUMNS) + " FROM problems WHERE 0")
        )


def _merge_stage(conn: Connection, source: _RowSource) -> int:
    """Check staged rows against existing ones, then insert the new ones. Returns rows inserted."""
    conflicts = (
        conn.execute(
            text(
                "SELECT s.source_id FROM ingest_stage s JOIN problems p "
                "ON p.corpus_id = s.corpus_id AND p.split = s.split AND p.source_id = s.source_id "
                "WHERE p.content_hash <> s.content_hash ORDER BY s.source_id"
            )
        )
        .scalars()
        .all()
    )
    for source_id in conflicts:
        source.reject(
            BadRecord(
                source.where(source_id),
                "id",
                f"id {source_id!r} was already ingested in {source.report.corpus}/{source.split} with "
                "different content; ingest the new version under another --corpus or --split name",
            )
        )
    if conflicts:
        # Only reached with skip_invalid: drop the conflicting rows before merging.
        conn.execute(
            text(
                "DELETE FROM ingest_stage WHERE source_id IN (SELECT s.source_id FROM ingest_stage s "
                "JOIN problems p ON p.corpus_id = s.corpus_id AND p.split = s.split "
                "AND p.source_id = s.source_id WHERE p.content_hash <> s.content_hash)"
            )
        )
    cols = ", ".join(COLUMNS)
    result = conn.execute(
        text(
            f"INSERT INTO problems ({cols}) SELECT {cols} FROM ingest_stage WHERE true "
            "ON CONFLICT (corpus_id, split, source_id) DO NOTHING"
        )
    )
    if conn.dialect.name != "postgresql":
        conn.execute(text("DROP TABLE temp.ingest_stage"))
    return int(result.rowcount)


def ingest_corpus(
    engine: Engine,
    loader: CorpusLoader,
    corpus_name: str,
    split: str | None = None,
    *,
    skip_invalid: bool = False,
    batch_size: int = 5000,
) -> IngestReport:
    """Ingest `loader`'s file into corpus `corpus_name`, split `split` (default: the format's)."""
    split = split or loader.default_split
    if not corpus_name.strip() or len(corpus_name) > 128:
        raise BadInputError("--corpus: give a name of 1 to 128 characters")
    report = IngestReport(corpus=corpus_name, split=split, path=str(loader.path))
    start = time.perf_counter()
    with Session(engine) as session, session.begin():
        corpus = get_or_create_corpus(session, corpus_name, loader.format)
        existing = count_split(session, corpus.id, split)
        conn = session.connection()
        source = _RowSource(loader, corpus.id, split, report, skip_invalid)
        if existing == 0:
            _write_rows(conn, "problems", source.rows(), batch_size)
            report.inserted = report.read - len(report.skipped)
        else:
            _create_stage(conn)
            _write_rows(conn, "ingest_stage", source.rows(), batch_size)
            report.inserted = _merge_stage(conn, source)
            report.unchanged = report.read - len(report.skipped) - report.inserted
        if report.read == len(report.skipped):
            raise BadInputError(
                f"{loader.path}: no valid records ({len(report.skipped)} skipped); nothing ingested"
                + (f". First problem: {report.skipped[0]}" if report.skipped else "")
            )
    report.seconds = time.perf_counter() - start
    return report


def default_corpus_name(path: Path) -> str:
    return path.stem
