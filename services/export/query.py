"""Reading the rationales an export selects: checked, counted, and streamed as Arrow tables.

One SELECT joins rationales to their problem and corpus and applies the row filters of the spec
(jobs, corpora, teachers, modes, verdict) in the database. It is ordered by problem id, then by
(provider, model, mode, prompt version, sample index, rationale id) compared by code point
(`COLLATE "C"` on Postgres, SQLite's default binary collation), so the output order never
depends on the database's collation and needs no sorting in Python.

`stream_batches` yields the rows as `pyarrow.Table`s of whole problems (`STREAM_SCHEMA`: the
columns of `RationaleRow`, with `solving_info` still JSON text, decoded once per batch by
`decode_json_lists`). On Postgres the SELECT runs as `COPY (...) TO STDOUT (FORMAT csv)` in the
caller's transaction: a helper thread receives the CSV, `STREAM_BATCH` rows at a time, and
parses each block with pyarrow's C++ CSV reader, so no Python object is built per value. The
export reads in one REPEATABLE READ transaction, so counts, evaluation corpora and rows all see
the same database state even while generation jobs keep writing. Elsewhere (SQLite, or a
Postgres connection whose client encoding is not UTF-8) SQLAlchemy streams the rows, in one read
transaction too (WAL gives SQLite a stable snapshot), and each fetch becomes one table.

A job selects its rationales through `job_rationales`: the ones it produced and the ones it
found stored and reused (so a job that paid nothing still exports them), recorded as it worked,
so a later job on the same problems adds nothing to an ended job's export. With the verdict
filter (`valid`) a rationale must also have been valid when the job recorded it: one that had
failed and was asked again by a later job stays out of the earlier job's export
(`services.generation.figures`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from queue import Empty, Full, Queue
from typing import Any, NamedTuple

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Text,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    or_,
    select,
)

from db.models import Corpus, GenerationJob, JobRationale, Problem, Rationale
from db.nul import ESCAPE, unescape_nul
from services.errors import BadInputError
from services.export.spec import ExportSpec
from services.export.writer import arrow_schema

# Rows per fetched block (COPY on Postgres, a fetch elsewhere).
STREAM_BATCH = 2_000


class RationaleRow(NamedTuple):
    """One selected rationale with its problem, in the column order of the rationale files
    (less `split`), as the per-problem filters see it. A NamedTuple, not a dataclass: one is
    built per row when deduplication or a cap is on."""

    rationale_id: int
    problem_id: int
    job_id: int | None
    corpus: str
    source_split: str
    source_id: str
    question: str
    gold_answer: str | None
    gold_kind: str
    gold_normalised: str | None
    teacher: str
    provider: str
    model: str
    mode: str
    stage_mode: str
    prompt_version: str
    sample_index: int
    core_question: str | None
    solving_info: list[str] | None
    # CoT text for mode `cot`, the program for mode `pot`.
    solution: str | None
    final_answer_text: str | None
    answer: str | None
    verdict: str
    verdict_kind: str | None
    judged_by: str | None


# The stream's columns: the rationale files' columns less `split`, `solving_info` as JSON text.
STREAM_SCHEMA = pa.schema(
    [
        pa.field(f.name, pa.string()) if f.name == "solving_info" else f
        for f in arrow_schema("rationales")
        if f.name != "split"
    ]
)
assert STREAM_SCHEMA.names == list(RationaleRow._fields)


@dataclass(slots=True)
class JobScope:
    """What one generation job covers: its id, teacher labels, modes and stage mode."""

    job_id: int
    teachers: list[str]
    modes: list[str]
    stage_mode: str


def _selected_columns() -> list[Any]:
    return [
        Rationale.id,
        Rationale.problem_id,
        Rationale.job_id,
        Corpus.name,
        Problem.split,
        Problem.source_id,
        Problem.question,
        Problem.gold_answer,
        Problem.gold_kind,
        Problem.gold_normalised,
        (Rationale.provider + ":" + Rationale.model).label("teacher"),
        Rationale.provider,
        Rationale.model,
        Rationale.mode,
        Rationale.stage_mode,
        Rationale.prompt_version,
        Rationale.sample_index,
        Rationale.core_question,
        # JSON text, decoded once per batch (`decode_json_lists`), not once per row.
        cast(Rationale.solving_info, Text).label("solving_info"),
        case((Rationale.mode == "pot", Rationale.program), else_=Rationale.solution_text).label("solution"),
        Rationale.final_answer_text,
        Rationale.answer,
        Rationale.verdict,
        Rationale.verdict_kind,
        Rationale.judged_by,
    ]


def _teacher_clause(labels: Iterable[str]) -> ColumnElement[bool]:
    pairs = [label.split(":", 1) for label in labels]
    return or_(false(), *(and_(Rationale.provider == p, Rationale.model == m) for p, m in pairs))


def _job_scope(jobs: list[JobScope], *, valid_only: bool) -> ColumnElement[bool]:
    """The rationales the jobs recorded as theirs (`job_rationales`); with `valid_only`, only
    those valid when recorded."""
    recorded = exists().where(
        JobRationale.rationale_id == Rationale.id, JobRationale.job_id.in_([job.job_id for job in jobs])
    )
    if valid_only:
        recorded = recorded.where(JobRationale.verdict == "valid")
    return recorded


def _where(spec: ExportSpec, jobs: list[JobScope], *, with_verdict: bool) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [Rationale.mode.in_(list(spec.modes))]
    if spec.corpora:
        where.append(Corpus.name.in_(list(spec.corpora)))
    if spec.teachers:
        where.append(_teacher_clause(spec.teachers))
    if jobs:
        where.append(_job_scope(jobs, valid_only=with_verdict and spec.verdict == "valid"))
    if with_verdict and spec.verdict == "valid":
        where.append(Rationale.verdict == "valid")
    return where


def _joined(stmt: Select[Any]) -> Select[Any]:
    return (
        stmt.select_from(Rationale)
        .join(Problem, Problem.id == Rationale.problem_id)
        .join(Corpus, Corpus.id == Problem.corpus_id)
    )


def check_selection(conn: Connection, spec: ExportSpec) -> list[JobScope]:
    """The spec's jobs, loaded; a BadInputError (exit 2) names an unknown job, corpus or teacher
    so that a typo never exports an empty snapshot."""
    jobs: list[JobScope] = []
    if spec.jobs:
        found = {
            int(row.id): row
            for row in conn.execute(
                select(
                    GenerationJob.id, GenerationJob.teachers, GenerationJob.modes, GenerationJob.stage_mode
                ).where(GenerationJob.id.in_(list(spec.jobs)))
            )
        }
        missing = [j for j in spec.jobs if j not in found]
        if missing:
            raise BadInputError(
                f"--job: no generation job {', '.join(map(str, missing))}; list jobs with `kpdd status`"
            )
        for job_id in spec.jobs:
            row = found[job_id]
            labels = [str(t.get("label") or t["spec"].split(",")[0].split("@")[0]) for t in row.teachers]
            jobs.append(JobScope(job_id, labels, [str(m) for m in row.modes], str(row.stage_mode)))
    if spec.corpora:
        known = set(conn.scalars(select(Corpus.name)))
        missing_corpora = [c for c in spec.corpora if c not in known]
        if missing_corpora:
            raise BadInputError(
                f"--corpus: no corpus named {', '.join(map(repr, missing_corpora))} "
                f"(corpora: {', '.join(sorted(known)) or 'none yet'})"
            )
    if spec.teachers:
        known_teachers = {
            f"{p}:{m}" for p, m in conn.execute(select(Rationale.provider, Rationale.model).distinct())
        }
        missing_teachers = [t for t in spec.teachers if t not in known_teachers]
        if missing_teachers:
            raise BadInputError(
                f"--teacher: no rationales by {', '.join(missing_teachers)} "
                f"(teachers: {', '.join(sorted(known_teachers)) or 'none yet'})"
            )
    return jobs


def available_by_verdict(conn: Connection, spec: ExportSpec, jobs: list[JobScope]) -> dict[str, int]:
    """How many rationales the row filters select before the verdict filter, by verdict."""
    stmt = select(Rationale.verdict, func.count())
    # Only the corpus filter needs the problem and its corpus (every rationale has both, so the
    # join drops nothing otherwise; without it the count takes a third of the time).
    stmt = _joined(stmt) if spec.corpora else stmt.select_from(Rationale)
    rows = conn.execute(stmt.where(*_where(spec, jobs, with_verdict=False)).group_by(Rationale.verdict))
    return {str(v): int(c) for v, c in sorted(rows, key=lambda r: str(r[0]))}


# The collation that compares text by code point (UTF-8 bytes), per dialect.
CODE_POINT_COLLATION = {"postgresql": "C", "sqlite": "BINARY"}


def select_rationales(spec: ExportSpec, jobs: list[JobScope], collation: str | None = None) -> Select[Any]:
    """The streaming SELECT: every row filter applied, ordered by problem id, then by provider,
    model, mode, prompt version (in `collation`: give the dialect's `CODE_POINT_COLLATION`),
    sample index and rationale id."""

    def text(column: Any) -> Any:
        return column.collate(collation) if collation else column

    stmt = _joined(select(*_selected_columns())).where(*_where(spec, jobs, with_verdict=True))
    return stmt.order_by(
        Rationale.problem_id,
        text(Rationale.provider),
        text(Rationale.model),
        text(Rationale.mode),
        text(Rationale.prompt_version),
        Rationale.sample_index,
        Rationale.id,
    )


# Postgres CSV: fields quoted with `"` (doubled inside) when they hold a delimiter, a quote or a
# line break; NULL is an empty unquoted field, an empty string a quoted one.
_CSV_PARSE = pa_csv.ParseOptions(newlines_in_values=True)
_CSV_CONVERT = pa_csv.ConvertOptions(
    column_types=STREAM_SCHEMA,
    null_values=[""],
    strings_can_be_null=True,
    quoted_strings_can_be_null=False,
)


def _parse_csv(block: bytearray, rows: int) -> pa.Table:
    """One block of whole CSV lines (as COPY sent them) as a table of `STREAM_SCHEMA`."""
    read = pa_csv.ReadOptions(
        column_names=STREAM_SCHEMA.names, use_threads=False, block_size=max(len(block) + 1, 1 << 20)
    )
    table = pa_csv.read_csv(
        pa.py_buffer(block), read_options=read, parse_options=_CSV_PARSE, convert_options=_CSV_CONVERT
    )
    if table.num_rows != rows:  # a parsing mistake must never pass silently
        raise RuntimeError(f"export stream: parsed {table.num_rows} rows out of {rows} received")
    return table


def _postgres_tables(conn: Connection, stmt: Select[Any], batch: int) -> Generator[pa.Table, None, None]:
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    driver = conn.connection.driver_connection
    assert driver is not None
    # Parameters are bound client-side by psycopg (COPY takes none of its own).
    statement = f"COPY ({compiled}) TO STDOUT (FORMAT csv)"
    with driver.cursor() as cursor, cursor.copy(statement, compiled.params) as copy:
        block = bytearray()
        rows = 0
        for line in copy:  # one CopyData message per row
            block += line
            rows += 1
            if rows == batch:
                yield _parse_csv(block, rows)
                block = bytearray()
                rows = 0
        if rows:
            yield _parse_csv(block, rows)


def _sqlalchemy_tables(conn: Connection, stmt: Select[Any], batch: int) -> Generator[pa.Table, None, None]:
    row_type = pa.struct(list(STREAM_SCHEMA))
    result = conn.execution_options(stream_results=True, yield_per=batch).execute(stmt)
    for rows in result.partitions():
        struct = pa.array([tuple(row) for row in rows], type=row_type)
        yield pa.Table.from_batches([pa.RecordBatch.from_struct_array(struct)], schema=STREAM_SCHEMA)


def _read_ahead(tables: Generator[pa.Table, None, None], depth: int) -> Generator[pa.Table, None, None]:
    """Iterate `tables` in a helper thread, up to `depth` tables ahead, so the database
    produces and pyarrow parses the next block while this thread processes the current one
    (psycopg and the CSV reader release the GIL while they wait or parse). The helper has
    finished, and ended the COPY, when this returns."""
    queue: Queue[tuple[str, Any]] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for table in tables:
                if not put(("table", table)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))
        finally:
            tables.close()

    helper = threading.Thread(target=produce, name="kpdd-export-fetch", daemon=True)
    helper.start()
    try:
        while True:
            kind, item = queue.get()
            if kind == "table":
                yield item
            elif kind == "end":
                return
            else:
                raise item
    finally:
        stop.set()
        while helper.is_alive():
            with contextlib.suppress(Empty):
                queue.get(timeout=0.1)
        helper.join()


def copy_applies(conn: Connection) -> bool:
    """Whether rows can come by COPY in CSV: on Postgres, with a UTF-8 client encoding (the only
    one pyarrow reads)."""
    info = getattr(conn.connection.driver_connection, "info", None)
    return conn.dialect.name == "postgresql" and getattr(info, "encoding", "") == "utf-8"


def _raw_tables(
    conn: Connection, spec: ExportSpec, jobs: list[JobScope], batch: int
) -> Generator[pa.Table, None, None]:
    """The selected rows, `batch` at a time, as tables of `STREAM_SCHEMA`. On Postgres through
    COPY in CSV, received and parsed by a helper thread: psycopg's row tuples and SQLAlchemy's
    Row objects cost more than the rest of the export together at a million rows. Elsewhere
    through SQLAlchemy's own streaming."""
    stmt = select_rationales(spec, jobs, CODE_POINT_COLLATION.get(conn.dialect.name))
    if copy_applies(conn):
        return _read_ahead(_postgres_tables(conn, stmt, batch), depth=3)
    return _sqlalchemy_tables(conn, stmt, batch)


def stream_batches(
    conn: Connection, spec: ExportSpec, jobs: list[JobScope], batch: int | None = None
) -> Generator[pa.Table, None, None]:
    """The selected rationales as tables of `STREAM_SCHEMA` holding whole problems (a problem
    is never split between two tables), in export order, read `batch` (default `STREAM_BATCH`)
    rows at a time. Memory holds a few fetch blocks."""
    tables = _raw_tables(conn, spec, jobs, batch or STREAM_BATCH)
    carry: pa.Table | None = None
    try:
        for raw in tables:
            if not raw.num_rows:
                continue
            block = _unescaped(raw)
            table = block if carry is None else pa.concat_tables([carry, block])
            problem_ids = table.column("problem_id")
            # The last problem may go on in the next block: keep it back.
            cut = pc.index(problem_ids, problem_ids[-1]).as_py()
            carry = table.slice(cut)
            if cut:
                yield table.slice(0, cut)
    finally:
        # Closing here (not at garbage collection) stops the read-ahead thread and ends the
        # COPY before the caller's transaction ends, even when the caller stopped early.
        tables.close()
    if carry is not None:
        yield carry


def _unescaped(table: pa.Table) -> pa.Table:
    """`table` with the text the database stores NUL-escaped (`db.nul`) read back as written.
    Columns holding no escape character (every ordinary one) are passed through untouched."""
    for index, field in enumerate(table.schema):
        if not pa.types.is_string(field.type) and not pa.types.is_large_string(field.type):
            continue
        column = table.column(index)
        if not pc.any(pc.match_substring(column, ESCAPE)).as_py():
            continue
        values = [unescape_nul(v) for v in column.to_pylist()]
        table = table.set_column(index, field, pa.array(values, type=field.type))
    return table


def problem_starts(table: pa.Table) -> list[int]:
    """The position of each problem's first row in `table` (ordered by problem id), then the
    number of rows: problem `i` is rows `starts[i]` to `starts[i + 1]`."""
    n = table.num_rows
    if not n:
        return [0]
    ids = table.column("problem_id").combine_chunks()
    changes = pc.indices_nonzero(pc.not_equal(ids.slice(1), ids.slice(0, n - 1)))
    return [0, *pc.add(changes, 1).to_pylist(), n]


def decode_json_lists(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """A column of JSON texts (null: None) decoded, in one orjson call for the whole column."""
    texts = pc.fill_null(column, "null").to_pylist()
    return list(orjson.loads("[" + ",".join(texts) + "]")) if texts else []


__all__ = [
    "CODE_POINT_COLLATION",
    "STREAM_BATCH",
    "STREAM_SCHEMA",
    "JobScope",
    "RationaleRow",
    "available_by_verdict",
    "check_selection",
    "copy_applies",
    "decode_json_lists",
    "problem_starts",
    "select_rationales",
    "stream_batches",
]
