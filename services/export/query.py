"""Reading the rationales an export selects: checked, counted, and streamed problem by problem.

One SELECT joins rationales to their problem and corpus and applies the row filters of the spec
(jobs, corpora, teachers, modes, verdict) in the database. It is ordered by problem id, so each
problem's rationales arrive together and the per-problem filters need one problem in memory at a
time. Within a problem the rows are re-sorted in Python by (provider, model, mode, prompt version,
sample index, rationale id) with code-point string order, so the output order never depends on
the database's collation.

On Postgres the rows come through a psycopg server-side (named) cursor, `STREAM_BATCH` rows per
fetch, read ahead by a helper thread, in the caller's transaction; the export reads in one
REPEATABLE READ transaction, so counts, evaluation corpora and rows all see the same database
state even while generation jobs keep writing. Elsewhere (SQLite) SQLAlchemy streams the rows,
in one read transaction too (WAL gives it a stable snapshot).

A job selects its *scope*: the rationales of the job's problems by the job's teachers, in the
job's modes and stage mode, whichever job first produced them. A job that found its rationales
already stored (and paid nothing) therefore still exports them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from queue import Empty, Full, Queue
from typing import Any, NamedTuple

import orjson
from psycopg.types.json import set_json_loads
from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    case,
    exists,
    false,
    func,
    or_,
    select,
)

from db.models import Corpus, GenerationJob, JobProblem, Problem, Rationale
from services.errors import BadInputError
from services.export.spec import ExportSpec

STREAM_BATCH = 2_000


class RationaleRow(NamedTuple):
    """One selected rationale with its problem, in the column order of the rationale files
    (less `split`). A NamedTuple, not a dataclass: a million of these are built straight from
    database row tuples."""

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
        Rationale.solving_info,
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


def _job_scope(jobs: list[JobScope]) -> ColumnElement[bool]:
    clauses = []
    for job in jobs:
        clauses.append(
            and_(
                exists().where(
                    JobProblem.job_id == job.job_id, JobProblem.problem_id == Rationale.problem_id
                ),
                _teacher_clause(job.teachers),
                Rationale.mode.in_(list(job.modes)),
                Rationale.stage_mode == job.stage_mode,
            )
        )
    return or_(false(), *clauses)


def _where(spec: ExportSpec, jobs: list[JobScope], *, with_verdict: bool) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [Rationale.mode.in_(list(spec.modes))]
    if spec.corpora:
        where.append(Corpus.name.in_(list(spec.corpora)))
    if spec.teachers:
        where.append(_teacher_clause(spec.teachers))
    if jobs:
        where.append(_job_scope(jobs))
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
    stmt = _joined(select(Rationale.verdict, func.count())).where(*_where(spec, jobs, with_verdict=False))
    rows = conn.execute(stmt.group_by(Rationale.verdict))
    return {str(v): int(c) for v, c in sorted(rows, key=lambda r: str(r[0]))}


def select_rationales(spec: ExportSpec, jobs: list[JobScope]) -> Select[Any]:
    """The streaming SELECT: every row filter applied, ordered by problem id."""
    stmt = _joined(select(*_selected_columns())).where(*_where(spec, jobs, with_verdict=True))
    return stmt.order_by(
        Rationale.problem_id,
        Rationale.provider,
        Rationale.model,
        Rationale.mode,
        Rationale.prompt_version,
        Rationale.sample_index,
    )


def _sort_key(row: RationaleRow) -> tuple[str, str, str, str, int, int]:
    return (row.provider, row.model, row.mode, row.prompt_version, row.sample_index, row.rationale_id)


def _postgres_batches(
    conn: Connection, stmt: Select[Any], batch: int
) -> Generator[Sequence[Any], None, None]:
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor(name="kpdd_export") as cursor:
        set_json_loads(orjson.loads, cursor)
        cursor.itersize = batch
        cursor.execute(str(compiled), compiled.params)
        while rows := cursor.fetchmany(batch):
            yield rows


def _read_ahead(batches: Generator[Sequence[Any], None, None], depth: int) -> Iterator[Sequence[Any]]:
    """Iterate `batches` in a helper thread, up to `depth` batches ahead, so the database
    produces the next batch while this thread processes the current one (psycopg releases the
    GIL while it waits). The helper has finished, and closed the cursor, when this returns."""
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
            for rows in batches:
                if not put(("rows", rows)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))
        finally:
            batches.close()

    helper = threading.Thread(target=produce, name="kpdd-export-fetch", daemon=True)
    helper.start()
    try:
        while True:
            kind, item = queue.get()
            if kind == "rows":
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


def _raw_batches(conn: Connection, stmt: Select[Any], batch: int) -> Generator[Sequence[Any], None, None]:
    """Row tuples, `batch` at a time. On Postgres through a psycopg server-side (named) cursor
    in the caller's transaction, read ahead by a helper thread, with JSON parsed by orjson:
    SQLAlchemy's Row objects and the standard `json` module cost more than the fetch itself at a
    million rows. Elsewhere through SQLAlchemy's own streaming."""
    if conn.dialect.name == "postgresql":
        yield from _read_ahead(_postgres_batches(conn, stmt, batch), depth=4)
        return
    result = conn.execution_options(stream_results=True, yield_per=batch).execute(stmt)
    yield from result.partitions()


def stream_problem_groups(
    conn: Connection, spec: ExportSpec, jobs: list[JobScope], batch: int = STREAM_BATCH
) -> Generator[list[RationaleRow], None, None]:
    """The selected rationales, one list per problem (problems in id order, rows in the
    collation-free order above). Memory holds one fetch batch and one problem."""
    make = RationaleRow._make
    group: list[RationaleRow] = []
    current = None
    batches = _raw_batches(conn, select_rationales(spec, jobs), batch)
    try:
        for rows in batches:
            for raw in rows:
                row = make(raw)
                if row.problem_id != current:
                    if group:
                        if len(group) > 1:
                            group.sort(key=_sort_key)
                        yield group
                    group = []
                    current = row.problem_id
                group.append(row)
    finally:
        # Closing here (not at garbage collection) stops the read-ahead thread and closes the
        # cursor before the caller's transaction ends, even when the caller stopped early.
        batches.close()
    if group:
        if len(group) > 1:
            group.sort(key=_sort_key)
        yield group


__all__ = [
    "JobScope",
    "RationaleRow",
    "available_by_verdict",
    "check_selection",
    "select_rationales",
    "stream_problem_groups",
]
