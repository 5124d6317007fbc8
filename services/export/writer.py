"""Snapshot data files: fixed schemas, written in row groups, byte-for-byte reproducible.

Tables (one file per table and split, `data/<table>/<split>.parquet` or `.jsonl`):

- `rationales`: one row per exported rationale, every layout (`RATIONALE_COLUMNS`).
- one table per student task of the layout (`formatting.LAYOUT_TASKS`, table names by
  `formatting.task_table`), all with `TASK_COLUMNS`: layout `end-to-end`: `end_to_end`;
  `two-stage`: `key_points`, `solution`; `cascade`: `core_question`, `solving_info`,
  `solution` (see `tasks`). Every input starts with the header line `[TASK | KPDD-CoT]` or
  `[TASK | KPDD-PoT]`.

Reproducibility: rows arrive as Arrow tables of any length and are written `row_group_size` at
a time, each row group as one contiguous chunk per column, so row-group (and page) boundaries
depend only on the rows, never on how the stream was cut; Parquet settings are pinned (format
2.6, zstd level 3, dictionary encoding of the low-cardinality columns only, statistics, no page
index, no timestamps); the only writer-specific bytes are pyarrow's `created_by` string, so
files are identical for the same rows and the same pyarrow version (recorded in the manifest).
JSON lines are written with sorted keys, one object per line, UTF-8, `\\n` endings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from services.kpdd.formatting import LAYOUT_TASKS, STUDENT_TASKS, student_header, task_table

# (name, Arrow type, description for the dataset card). The order is the files' column order and
# the order of `query.RationaleRow` plus the trailing `split`.
RATIONALE_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("rationale_id", pa.int64(), "id of the rationale in the kpdd database"),
    ("problem_id", pa.int64(), "id of the problem in the kpdd database"),
    ("job_id", pa.int64(), "generation job that produced the rationale (null if deleted)"),
    ("corpus", pa.string(), "corpus name"),
    ("source_split", pa.string(), "the problem's split in its corpus (train, test, ...)"),
    ("source_id", pa.string(), "the problem's id in its source file"),
    ("question", pa.string(), "the problem text"),
    ("gold_answer", pa.string(), "gold answer exactly as the source wrote it (null: none)"),
    ("gold_kind", pa.string(), "number | text | none"),
    ("gold_normalised", pa.string(), "normalised gold: exact rational for numbers, else text"),
    ("teacher", pa.string(), "provider:model"),
    ("provider", pa.string(), "teacher provider"),
    ("model", pa.string(), "teacher model"),
    ("mode", pa.string(), "cot (Chain-of-Thought text) | pot (Python program)"),
    ("stage_mode", pa.string(), "single (one call) | staged (three calls, one per stage)"),
    ("prompt_version", pa.string(), "version of the KPDD prompt that produced it"),
    ("sample_index", pa.int32(), "sample number for this problem, teacher, mode and prompt"),
    ("core_question", pa.string(), "key point 1: the question the problem really asks"),
    ("solving_info", pa.list_(pa.string()), "key point 2: the problem-solving information, listed"),
    ("solution", pa.string(), "key point 3: CoT steps (cot) or the program storing `ans` (pot)"),
    ("final_answer_text", pa.string(), "cot: the final answer as written after 'The answer is:'"),
    ("answer", pa.string(), "the answer as judged: extracted (cot) or computed by the sandbox (pot)"),
    ("verdict", pa.string(), "valid | invalid | unparsed | failed"),
    ("verdict_kind", pa.string(), "finer reason: match, mismatch, no_answer, timeout, malformed, ..."),
    ("judged_by", pa.string(), "gold | consensus"),
    ("split", pa.string(), "snapshot split: train | validation"),
]

TASK_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("rationale_id", pa.int64(), "the rationale the target comes from (first one, when deduplicated)"),
    ("problem_id", pa.int64(), "id of the problem in the kpdd database"),
    ("teacher", pa.string(), "provider:model"),
    ("mode", pa.string(), "cot | pot"),
    ("input", pa.string(), "what the student reads"),
    ("target", pa.string(), "what the student learns to write"),
    ("split", pa.string(), "snapshot split: train | validation"),
]
_PROBLEM = "`Problem:` and the question"
# Task -> (its input, its target), for the column descriptions of its table.
TASK_TEXTS: dict[str, tuple[str, str]] = {
    "end-to-end": (
        _PROBLEM,
        "the complete answer: `Core question:`, `Problem-solving information:` list, `Solution:`",
    ),
    "key-points": (_PROBLEM, "`Core question: ...` and the `Problem-solving information:` list"),
    "core-question": (_PROBLEM, "`Core question: ...`"),
    "solving-info": (f"{_PROBLEM}, `Core question: ...`", "the `Problem-solving information:` list"),
    "solution": (
        f"{_PROBLEM}, `Core question: ...`, the `Problem-solving information:` list",
        "the `Solution:` section: CoT steps and `The answer is: ...` (cot), or a Python program "
        "storing `ans` in a python code fence (pot)",
    ),
}
TABLE_TASKS = {task_table(task): task for task in STUDENT_TASKS}
LAYOUT_TABLES: dict[str, tuple[str, ...]] = {
    layout: ("rationales", *map(task_table, tasks)) for layout, tasks in LAYOUT_TASKS.items()
}
# Low-cardinality columns are dictionary-encoded; long free text (questions, solutions,
# targets) is not: a dictionary there is built only to be thrown away, which costs time.
DICTIONARY_COLUMNS = frozenset(
    {"corpus", "source_split", "gold_kind", "teacher", "provider", "model", "mode", "stage_mode"}
    | {"prompt_version", "verdict", "verdict_kind", "judged_by", "split"}
)
PARQUET_OPTIONS: dict[str, Any] = {
    "version": "2.6",
    "compression": "zstd",
    "compression_level": 3,
    "write_statistics": True,
    "data_page_version": "1.0",
    "write_page_index": False,
    "store_schema": True,
}
EXTENSIONS = {"parquet": "parquet", "jsonl": "jsonl"}


def table_columns(table: str) -> list[tuple[str, pa.DataType, str]]:
    """A table's columns; a task table's `input` and `target` are described for its task."""
    if table == "rationales":
        return RATIONALE_COLUMNS
    task = TABLE_TASKS[table]
    input_text, target_text = TASK_TEXTS[task]
    described = {
        "input": f"what the student reads: the line `{student_header(task, 'cot')}` or "
        f"`{student_header(task, 'pot')}`, then {input_text}",
        "target": f"what the student learns to write: {target_text}",
    }
    return [(name, kind, described.get(name, doc)) for name, kind, doc in TASK_COLUMNS]


def arrow_schema(table: str) -> pa.Schema:
    return pa.schema([pa.field(name, kind) for name, kind, _ in table_columns(table)])


def data_path(table: str, split: str, format_name: str) -> str:
    """A data file's path inside the snapshot, with `/` separators."""
    return f"data/{table}/{split}.{EXTENSIONS[format_name]}"


@dataclass(slots=True)
class WrittenFile:
    path: str  # relative to the snapshot root
    table: str
    split: str
    rows: int


class TableWriter(ABC):
    """Buffers Arrow tables (columns as in `arrow_schema(table)`) and writes them
    `row_group_size` rows at a time; a writer that encodes may hand that work to `encoder`."""

    def __init__(
        self,
        root: Path,
        table: str,
        split: str,
        format_name: str,
        row_group_size: int,
        encoder: Encoder | None = None,
    ) -> None:
        self.relative = data_path(table, split, format_name)
        self.path = root / self.relative
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.table = table
        self.split = split
        self.columns = table_columns(table)
        self.schema = arrow_schema(table)
        self.row_group_size = row_group_size
        self.rows = 0
        self.encoder = encoder
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._open()

    @abstractmethod
    def _open(self) -> None:
        """Open the output file at `self.path` (called once, by the constructor)."""

    def write(self, rows: pa.Table) -> None:
        """Append `rows` (schema `self.schema`) to the file."""
        if not rows.num_rows:
            return
        self._pending.append(rows)
        self._pending_rows += rows.num_rows
        while self._pending_rows >= self.row_group_size:
            self._flush(self.row_group_size)

    def _flush(self, count: int) -> None:
        pending = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        rest = pending.slice(count)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        self._write_group(pending.slice(0, count))
        self.rows += count

    def close(self) -> WrittenFile:
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._close()
        return WrittenFile(self.relative, self.table, self.split, self.rows)

    @abstractmethod
    def _write_group(self, rows: pa.Table) -> None:
        """Write these rows (one row group) to the file."""

    @abstractmethod
    def _close(self) -> None:
        """Finish the file (footer, flush)."""


class Encoder:
    """One helper thread that encodes and compresses Parquet row groups (pyarrow releases the GIL
    there) while the caller prepares the next ones: groups run in submission order, at most
    `depth` behind. One thread for all the files of an export, so their encoders' scratch memory
    is reused rather than held once per thread. An encoding error is raised by the next call."""

    def __init__(self, depth: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kpdd-parquet")
        self._in_flight: deque[Future[None]] = deque()
        self._depth = depth

    def submit(self, encode: Callable[[pa.Table], None], rows: pa.Table) -> None:
        while len(self._in_flight) >= self._depth:
            self._in_flight.popleft().result()
        self._in_flight.append(self._pool.submit(encode, rows))

    def drain(self) -> None:
        """Wait for every submitted group (raising the first error)."""
        while self._in_flight:
            self._in_flight.popleft().result()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown()


class ParquetTableWriter(TableWriter):
    """Encodes row groups through `encoder` (in a helper thread), or in the caller without one."""

    def _open(self) -> None:
        dictionary = [name for name in self.schema.names if name in DICTIONARY_COLUMNS]
        self._writer = pq.ParquetWriter(
            str(self.path), self.schema, use_dictionary=dictionary, **PARQUET_OPTIONS
        )

    def _write_group(self, rows: pa.Table) -> None:
        if self.encoder is None:
            self._encode(rows)
        else:
            self.encoder.submit(self._encode, rows)

    def _encode(self, rows: pa.Table) -> None:
        # One chunk per column: the encoder's page boundaries depend on the chunks it is given.
        self._writer.write_table(rows.combine_chunks(), self.row_group_size)

    def _close(self) -> None:
        try:
            if self.encoder is not None:
                self.encoder.drain()  # this file's groups are among them
        finally:
            self._writer.close()


class JsonLinesTableWriter(TableWriter):
    """Writes in the caller (building the lines is Python work: a thread would not help)."""

    def _open(self) -> None:
        self._file = self.path.open("wb")

    def _write_group(self, rows: pa.Table) -> None:
        dumps = orjson.dumps
        option = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
        self._file.write(b"".join(dumps(row, option=option) for row in rows.to_pylist()))

    def _close(self) -> None:
        self._file.close()


WRITERS: dict[str, type[TableWriter]] = {"parquet": ParquetTableWriter, "jsonl": JsonLinesTableWriter}


def open_writer(
    root: Path,
    table: str,
    split: str,
    format_name: str,
    row_group_size: int,
    encoder: Encoder | None = None,
) -> TableWriter:
    return WRITERS[format_name](root, table, split, format_name, row_group_size, encoder)


def count_rows(path: Path) -> int:
    """Rows in a data file: from the Parquet footer, or the number of JSON lines."""
    if path.suffix == ".parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    with path.open("rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))


__all__ = [
    "LAYOUT_TABLES",
    "PARQUET_OPTIONS",
    "RATIONALE_COLUMNS",
    "TABLE_TASKS",
    "TASK_COLUMNS",
    "TASK_TEXTS",
    "Encoder",
    "TableWriter",
    "WrittenFile",
    "arrow_schema",
    "count_rows",
    "data_path",
    "open_writer",
]
