"""Building a snapshot's files from the stream: one batch of whole problems at a time.

`SnapshotBuilder.add` takes a batch from `query.stream_batches` and, in order: drops the problems
that overlap an evaluation set (`decontam`), applies deduplication and the cap per problem
(`filters`, on `RationaleRow`s, only when asked for), assigns each problem's split, counts the
rows, builds the task rows of the layout (`tasks`) and hands every table to its writer. Without
per-problem filters the rationale columns go from the stream to the files as Arrow arrays; only
`solving_info` (JSON text, decoded once per batch) and the task texts pass through Python.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from services.export.decontam import Decontaminator, DecontamReport
from services.export.filters import FilterCounts, problem_filter
from services.export.query import STREAM_SCHEMA, RationaleRow, decode_json_lists, problem_starts
from services.export.spec import ExportSpec
from services.export.splits import TRAIN, split_of
from services.export.tasks import KeyPointColumns, TaskColumns, build_tasks
from services.export.writer import LAYOUT_TABLES, Encoder, TableWriter, WrittenFile, arrow_schema, open_writer

# (split, corpus, source split, teacher, mode, verdict, prompt version) -> rows
TallyKey = tuple[str, str, str, str, str, str, str]
TALLY_COLUMNS = ("split", "corpus", "source_split", "teacher", "mode", "verdict", "prompt_version")
TALLY_EVERY = 50_000

_RATIONALES = arrow_schema("rationales")
_TASKS = arrow_schema("end_to_end")  # every task table has the same columns
_SOLVING_INFO = _RATIONALES.get_field_index("solving_info")
_SOLVING_INFO_TYPE = _RATIONALES.field("solving_info").type


@dataclass(slots=True)
class SnapshotBuilder:
    """Takes the selected rationales a batch of whole problems at a time (`query.stream_batches`)
    and writes what survives the filters. Without decontamination, deduplication or a cap, a
    batch goes to the files as Arrow columns; only the task texts are built in Python."""

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
    _untallied: list[pa.Table] = field(default_factory=list)
    _untallied_rows: int = 0
    _encoder: Encoder = field(default_factory=Encoder)

    def __post_init__(self) -> None:
        spec = self.spec
        self._per_problem = problem_filter(
            spec.dedupe, spec.near_duplicate_threshold, spec.max_per_problem, self.filter_counts
        )
        self.writers = {
            split: {
                table: open_writer(self.root, table, split, spec.format, spec.row_group_size, self._encoder)
                for table in LAYOUT_TABLES[spec.layout]
            }
            for split in spec.splits
        }

    def add(self, batch: pa.Table) -> None:
        """Filter, split, count and write one batch (`query.STREAM_SCHEMA`, whole problems)."""
        self.selected += batch.num_rows
        starts = problem_starts(batch)
        if self.decontaminator is not None:
            batch, starts = self._decontaminate(batch, starts)
        questions = batch.column("question").take(_indices(starts[:-1])).to_pylist()
        solving_info = decode_json_lists(batch.column("solving_info"))
        splits = [split_of(q, self.spec.split_seed, self.spec.val_fraction) for q in questions]
        self.problems.update(splits)
        if self._per_problem is not None:
            batch, starts, solving_info, splits = self._filter(batch, starts, solving_info, splits)
        if not batch.num_rows:
            return
        split_column = _split_column(splits, starts)
        rationales = pa.Table.from_arrays(
            [
                *batch.columns[:_SOLVING_INFO],
                pa.array(solving_info, type=_SOLVING_INFO_TYPE),
                *batch.columns[_SOLVING_INFO + 1 :],
                split_column,
            ],
            schema=_RATIONALES,
        )
        self._count(rationales)
        tables = {"rationales": rationales}
        key_points = KeyPointColumns(
            starts,
            questions,
            batch.column("core_question").to_pylist(),
            solving_info,
            batch.column("solution").to_pylist(),
            batch.column("final_answer_text").to_pylist(),
            batch.column("mode").to_pylist(),
        )
        for table, rows in build_tasks(self.spec.layout, key_points).items():
            tables[table] = _task_table(rationales, rows)
        self._write(tables)

    def _write(self, tables: dict[str, pa.Table]) -> None:
        """Each table's rows to the file of their split."""
        for table, rows in tables.items():
            for split in self.spec.splits:
                if len(self.spec.splits) > 1:
                    self.writers[split][table].write(rows.filter(pc.equal(rows.column("split"), split)))
                else:
                    self.writers[split][table].write(rows)

    def _decontaminate(self, batch: pa.Table, starts: list[int]) -> tuple[pa.Table, list[int]]:
        """Drop the problems whose question overlaps an evaluation question (reported)."""
        assert self.decontaminator is not None
        firsts = batch.select(["problem_id", "corpus", "source_split", "source_id", "question"])
        keep: list[int] = []
        for problem, first in enumerate(firsts.take(_indices(starts[:-1])).to_pylist()):
            begin, end = starts[problem], starts[problem + 1]
            self.decontam.checked_problems += 1
            match = self.decontaminator.check(first["question"])
            if match is None:
                keep.extend(range(begin, end))
                continue
            self.decontam.dropped_rationales += end - begin
            self.decontam.dropped.append(
                {
                    "problem_id": first["problem_id"],
                    "corpus": first["corpus"],
                    "source_split": first["source_split"],
                    "source_id": first["source_id"],
                    "rationales": end - begin,
                    "dataset": match.dataset,
                    "eval_id": match.eval_id,
                    "overlap": round(match.overlap, 4),
                    "matches": match.matches,
                }
            )
        if len(keep) == batch.num_rows:
            return batch, starts
        batch = batch.take(_indices(keep))
        return batch, problem_starts(batch)

    def _filter(
        self, batch: pa.Table, starts: list[int], solving_info: list[Any], splits: list[str]
    ) -> tuple[pa.Table, list[int], list[Any], list[str]]:
        """Deduplication and the cap, one problem at a time, on `RationaleRow`s."""
        assert self._per_problem is not None
        columns = [
            solving_info if name == "solving_info" else batch.column(name).to_pylist()
            for name in STREAM_SCHEMA.names
        ]
        rows = list(map(RationaleRow._make, zip(*columns, strict=True)))
        position = {row.rationale_id: i for i, row in enumerate(rows)}
        keep: list[int] = []
        kept_splits: list[str] = []
        for problem, split in enumerate(splits):
            kept = self._per_problem(rows[starts[problem] : starts[problem + 1]])
            if kept:
                keep.extend(position[row.rationale_id] for row in kept)
                kept_splits.append(split)
        if len(keep) == batch.num_rows:
            return batch, starts, solving_info, splits
        batch = batch.take(_indices(keep))
        return batch, problem_starts(batch), [solving_info[i] for i in keep], kept_splits

    def _count(self, rationales: pa.Table) -> None:
        # Counted TALLY_EVERY rows at a time: one group-by costs about as much for 2,000 rows.
        self._untallied.append(rationales.select(list(TALLY_COLUMNS)))
        self._untallied_rows += rationales.num_rows
        if self._untallied_rows >= TALLY_EVERY:
            self._tally_pending()

    def _tally_pending(self) -> None:
        if not self._untallied:
            return
        rows = pa.concat_tables(self._untallied)
        self._untallied, self._untallied_rows = [], 0
        counts = rows.group_by(list(TALLY_COLUMNS), use_threads=False).aggregate([([], "count_all")])
        tally = self.tally
        for row in counts.to_pylist():
            tally[tuple(row[c] for c in TALLY_COLUMNS)] += row["count_all"]

    def close(self) -> list[WrittenFile]:
        """Close every file (all of them, even when one fails: the first error is raised)."""
        self._tally_pending()
        written: list[WrittenFile] = []
        error: BaseException | None = None
        for split in self.spec.splits:
            for writer in self.writers[split].values():
                try:
                    written.append(writer.close())
                except BaseException as exc:  # every file is closed before raising
                    error = error or exc
        try:
            self._encoder.close()
        except BaseException as exc:
            error = error or exc
        if error is not None:
            raise error
        return written

    def counts_json(self) -> dict[str, Any]:
        self._tally_pending()

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
        self._tally_pending()
        out: Counter[str] = Counter()
        for key, n in self.tally.items():
            out[key[6]] += n
        return dict(sorted(out.items()))


def _indices(positions: list[int]) -> pa.Array:
    return pa.array(positions, type=pa.int64())


def _split_column(splits: list[str], starts: list[int]) -> pa.Array:
    """Each row's split, from each problem's."""
    if len(set(splits)) <= 1:
        return pa.repeat(pa.scalar(splits[0] if splits else TRAIN, pa.string()), starts[-1])
    rows = [split for i, split in enumerate(splits) for _ in range(starts[i + 1] - starts[i])]
    return pa.array(rows, type=pa.string())


def _task_table(rationales: pa.Table, rows: TaskColumns) -> pa.Table:
    """Task rows as a table: ids, teacher, mode and split taken from their rationales."""
    source = rationales.select(["rationale_id", "problem_id", "teacher", "mode", "split"])
    if len(rows.positions) < rationales.num_rows:  # else every row has one task row, in order
        source = source.take(_indices(rows.positions))
    return pa.Table.from_arrays(
        [
            *source.columns[:4],
            pa.array(rows.inputs, type=pa.string()),
            pa.array(rows.targets, type=pa.string()),
            source.column("split"),
        ],
        schema=_TASKS,
    )


__all__ = ["TALLY_COLUMNS", "SnapshotBuilder", "TallyKey"]
