"""Snapshot data files: fixed schemas, written in row groups, byte-for-byte reproducible.

Tables (one file per table and split, `data/<table>/<split>.parquet` or `.jsonl`):

- `rationales`: one row per exported rationale, every layout (`RATIONALE_COLUMNS`).
- layout `end-to-end`: `end_to_end`, one row per rationale whose key points are complete: the
  input is the problem, the target all three stages in the KPDD answer format.
- layout `cascade`: the three student tasks, `core_question` (problem -> core question),
  `solving_info` (problem + core question -> information) and `solution` (problem + core
  question + information -> solution), with the same inputs the staged teacher prompts use.

Reproducibility: rows are buffered and written `row_group_size` at a time, so row-group
boundaries depend only on the rows; Parquet settings are pinned (format 2.6, zstd level 3,
dictionary encoding of the low-cardinality columns only, statistics, no page index, no
timestamps); the only writer-specific bytes are pyarrow's `created_by` string, so files are
identical for the same rows and the same pyarrow version (recorded in the manifest). JSON
lines are written with sorted keys, one object per line, UTF-8, `\\n` endings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

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

LAYOUT_TABLES: dict[str, tuple[str, ...]] = {
    "end-to-end": ("rationales", "end_to_end"),
    "cascade": ("rationales", "core_question", "solving_info", "solution"),
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
    return RATIONALE_COLUMNS if table == "rationales" else TASK_COLUMNS


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
    """Buffers row tuples (in column order) and writes them `row_group_size` at a time."""

    def __init__(self, root: Path, table: str, split: str, format_name: str, row_group_size: int) -> None:
        self.relative = data_path(table, split, format_name)
        self.path = root / self.relative
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.table = table
        self.split = split
        self.columns = table_columns(table)
        self.row_group_size = row_group_size
        self.rows = 0
        self._buffer: list[tuple[Any, ...]] = []

    def add(self, row: tuple[Any, ...]) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.row_group_size:
            self._flush()

    def extend(self, rows: list[tuple[Any, ...]]) -> None:
        self._buffer.extend(rows)
        if len(self._buffer) >= self.row_group_size:
            rest = self._buffer[self.row_group_size :]
            del self._buffer[self.row_group_size :]
            self._flush()
            for row in rest:
                self.add(row)

    def _flush(self) -> None:
        if self._buffer:
            self._write_batch(self._buffer)
            self.rows += len(self._buffer)
            self._buffer = []

    def close(self) -> WrittenFile:
        self._flush()
        self._close()
        return WrittenFile(self.relative, self.table, self.split, self.rows)

    @abstractmethod
    def _write_batch(self, rows: list[tuple[Any, ...]]) -> None:
        """Write these rows (at most one row group) to the file."""

    @abstractmethod
    def _close(self) -> None:
        """Finish the file (footer, flush)."""


class ParquetTableWriter(TableWriter):
    def __init__(self, root: Path, table: str, split: str, format_name: str, row_group_size: int) -> None:
        super().__init__(root, table, split, format_name, row_group_size)
        self.schema = arrow_schema(table)
        self._row_type = pa.struct(list(self.schema))
        dictionary = [name for name in self.schema.names if name in DICTIONARY_COLUMNS]
        self._writer = pq.ParquetWriter(
            str(self.path), self.schema, use_dictionary=dictionary, **PARQUET_OPTIONS
        )

    def _write_batch(self, rows: list[tuple[Any, ...]]) -> None:
        # Row tuples convert to one struct array in C++, twice as fast as transposing in Python.
        batch = pa.RecordBatch.from_struct_array(pa.array(rows, type=self._row_type))
        self._writer.write_table(pa.Table.from_batches([batch], schema=self.schema), self.row_group_size)

    def _close(self) -> None:
        self._writer.close()


class JsonLinesTableWriter(TableWriter):
    def __init__(self, root: Path, table: str, split: str, format_name: str, row_group_size: int) -> None:
        super().__init__(root, table, split, format_name, row_group_size)
        self._names = [name for name, _, _ in self.columns]
        self._file = self.path.open("wb")

    def _write_batch(self, rows: list[tuple[Any, ...]]) -> None:
        names = self._names
        dumps = orjson.dumps
        option = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
        self._file.write(b"".join(dumps(dict(zip(names, row, strict=True)), option=option) for row in rows))

    def _close(self) -> None:
        self._file.close()


WRITERS: dict[str, type[TableWriter]] = {"parquet": ParquetTableWriter, "jsonl": JsonLinesTableWriter}


def open_writer(root: Path, table: str, split: str, format_name: str, row_group_size: int) -> TableWriter:
    return WRITERS[format_name](root, table, split, format_name, row_group_size)


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
    "TASK_COLUMNS",
    "TableWriter",
    "WrittenFile",
    "arrow_schema",
    "count_rows",
    "data_path",
    "open_writer",
]
