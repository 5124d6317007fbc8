"""Read the student tasks of one layout and split from an exported snapshot (`kpdd export`).

A snapshot is a directory with `manifest.json` and `data/<table>/<split>.parquet` (or `.jsonl`);
task tables carry `mode`, `input`, `target` (and `split`). A layout's tables are
`LAYOUT_TASKS[layout]` through `task_table` (`end-to-end` -> `end_to_end`; `two-stage` ->
`key_points`, `solution`; `cascade` -> `core_question`, `solving_info`, `solution`).

Contract:

- Rows come back in a deterministic order: the layout's tasks in inference order, then each
  file's row order (which the export fixes).
- A snapshot that would teach a student two answers to one input is refused (`SnapshotError`):
  an input that appears with targets of two modes, or rows of more than one mode whose inputs
  lack the `[TASK | KPDD-CoT]` / `[TASK | KPDD-PoT]` header line (snapshots older than the
  student input format 2). Both checks look at the rows that will be trained on, that is after
  the `modes` filter: a header-less snapshot still trains a single-mode student.
- An input whose header names another task or mode than its row is refused (a corrupt file).
- A missing split other than `train` (usually `validation`, absent when the export's
  `--val-fraction` was 0) gives an empty list; a missing `train` file is an error.

Not checked here: the files' sha256 against the manifest (the caller verifies the snapshot
before training, see `kpdd snapshot verify`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from services.kpdd.formatting import LAYOUT_TASKS, MODE_LABELS, student_header, task_table

MODES = tuple(MODE_LABELS)
TASK_COLUMNS = ("mode", "input", "target")
HEADER_RE = re.compile(r"\[([a-z-]+) \| (KPDD-[A-Za-z]+)\]")
REEXPORT_FIX = (
    "re-export with this kpdd version: `kpdd export ...` (same filters, a new --out); "
    "task inputs now carry a mode header"
)


@dataclass(slots=True)
class TaskExample:
    """One student example: `task` is a `STUDENT_TASKS` name (`end-to-end`, `solution`, ...)."""

    task: str
    mode: str
    input: str
    target: str


class SnapshotError(ValueError):
    """A snapshot that cannot be trained on; the message names the file or table and the fix."""


def read_manifest(snapshot_dir: Path) -> dict[str, Any]:
    path = Path(snapshot_dir) / "manifest.json"
    if not path.is_file():
        raise SnapshotError(f"{path} not found: pass the directory written by `kpdd export --out DIR`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path} is not readable JSON ({exc}); export the snapshot again") from exc
    if not isinstance(manifest, dict):
        raise SnapshotError(f"{path} is not a JSON object; export the snapshot again")
    return manifest


def snapshot_layouts(snapshot_dir: Path, manifest: dict[str, Any] | None = None) -> list[str]:
    """The layouts whose every task table the snapshot holds (any split), in `LAYOUT_TASKS` order."""
    manifest = read_manifest(snapshot_dir) if manifest is None else manifest
    tables = _tables(Path(snapshot_dir), manifest)
    return [name for name, tasks in LAYOUT_TASKS.items() if all(task_table(t) in tables for t in tasks)]


def read_tasks(
    snapshot_dir: Path,
    layout: str | None,
    split: str = "train",
    modes: Sequence[str] | None = None,
) -> list[TaskExample]:
    """Every task example of `layout` (None: the layout the snapshot was exported with) in `split`,
    keeping only `modes` when given (`cot`, `pot`)."""
    root = Path(snapshot_dir)
    manifest = read_manifest(root)
    if modes is not None:
        unknown = sorted(set(modes) - set(MODES))
        if unknown or not modes:
            raise ValueError(f"modes {list(modes)!r}: each must be one of {', '.join(MODES)}")
    if layout is None:
        layout = str((manifest.get("spec") or {}).get("layout") or "")
        if not layout:
            raise SnapshotError(f"{root}/manifest.json has no spec.layout: pass the layout explicitly")
    if layout not in LAYOUT_TASKS:
        raise SnapshotError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUT_TASKS)}")
    available = snapshot_layouts(root, manifest)
    if layout not in available:
        raise SnapshotError(
            f"snapshot {root} has no `{layout}` tables (it has: {', '.join(available) or 'no task tables'}); "
            f"pass one of those, or export with `kpdd export --layout {layout}`"
        )
    examples: list[TaskExample] = []
    for task in LAYOUT_TASKS[layout]:
        table = task_table(task)
        path = _data_file(root, manifest, table, split)
        if path is None:
            if split == "train":
                raise SnapshotError(
                    f"snapshot {root} has no train file for table `{table}`; export the snapshot again"
                )
            continue
        rows = [r for r in _read_rows(path) if modes is None or r["mode"] in modes]
        _check_rows(path, table, task, rows)
        examples += [TaskExample(task, r["mode"], r["input"], r["target"]) for r in rows]
    return examples


def _tables(root: Path, manifest: dict[str, Any]) -> set[str]:
    files = manifest.get("files")
    if isinstance(files, list):
        return {str(f["table"]) for f in files if isinstance(f, dict) and f.get("role") == "data"}
    data = root / "data"
    return {p.name for p in data.iterdir() if p.is_dir()} if data.is_dir() else set()


def _data_file(root: Path, manifest: dict[str, Any], table: str, split: str) -> Path | None:
    """The table's file for `split`: as the manifest lists it, else found on disk."""
    for entry in manifest.get("files") or []:
        if not isinstance(entry, dict) or entry.get("role") != "data":
            continue
        if (entry.get("table"), entry.get("split")) == (table, split):
            path = root / str(entry["path"])
            if not path.is_file():
                raise SnapshotError(f"{path} is listed in the manifest but missing; copy the whole snapshot")
            return path
    for ext in ("parquet", "jsonl"):
        path = root / "data" / table / f"{split}.{ext}"
        if path.is_file():
            return path
    return None


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        try:
            schema_names = pq.read_schema(path).names
            missing = [c for c in TASK_COLUMNS if c not in schema_names]
            if missing:
                raise SnapshotError(f"{path} lacks columns {missing}; it is not a task table, export again")
            rows = pq.read_table(path, columns=list(TASK_COLUMNS)).to_pylist()
        except SnapshotError:
            raise
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise SnapshotError(f"{path} is not a readable Parquet file ({exc}); export again") from exc
    else:
        rows = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SnapshotError(f"{path}:{number} is not JSON ({exc}); export again") from exc
                missing = [c for c in TASK_COLUMNS if c not in row]
                if missing:
                    raise SnapshotError(f"{path}:{number} lacks {missing}; it is not a task table")
                rows.append({c: row[c] for c in TASK_COLUMNS})
    for number, row in enumerate(rows, 1):
        if (
            row["mode"] not in MODES
            or not isinstance(row["input"], str)
            or not isinstance(row["target"], str)
        ):
            raise SnapshotError(
                f"{path} row {number}: mode must be cot|pot and input/target text "
                f"(got mode {row['mode']!r}); export the snapshot again"
            )
    return rows


def _check_rows(path: Path, table: str, task: str, rows: list[dict[str, Any]]) -> None:
    """Refuse rows that would give a student one input with two kinds of answer."""
    modes_of: dict[str, set[str]] = {}
    headerless = 0
    for row in rows:
        text: str = row["input"]
        modes_of.setdefault(text, set()).add(row["mode"])
        first_line = text.split("\n", 1)[0]
        if HEADER_RE.fullmatch(first_line) is None:
            headerless += 1
        elif first_line != (expected := student_header(task, row["mode"])):
            raise SnapshotError(
                f"table `{table}` ({path}): an input starts with {first_line!r} but its row is "
                f"{expected!r}; the file is inconsistent, export the snapshot again"
            )
    clashes = sum(1 for found in modes_of.values() if len(found) > 1)
    if clashes:
        raise SnapshotError(
            f"table `{table}` ({path}): {clashes} inputs appear with both CoT and PoT targets, so the "
            f"student could not tell which to write; {REEXPORT_FIX} (or pass modes= to train one mode)"
        )
    modes = {row["mode"] for row in rows}
    if len(modes) > 1 and headerless:
        raise SnapshotError(
            f"table `{table}` ({path}): {headerless} of {len(rows)} inputs lack the mode header line "
            f"while the table mixes modes {sorted(modes)}; {REEXPORT_FIX} (or pass modes= to train one mode)"
        )
