"""`EvalItem` and the items file: one JSON object per line, `dataset`, `item_id`, `question`, `gold`.

    {"dataset": "gsm8k-test", "item_id": "12", "question": "...", "gold": "18"}

`gold` is the answer as the source wrote it (text, or a JSON number which is read as its text);
the project's answer matcher decides how it compares (`services.validation.gold`). An item
without a gold cannot be scored, so a missing or blank gold is an input error, as is a
duplicate (`dataset`, `item_id`): predictions are keyed by that pair. Blank lines are skipped.
Any other bad line stops the read with an `EvalInputError` naming `FILE:LINE` and the fix:
evaluation numbers over a silently shortened test set would be wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.evaluate.errors import EvalInputError

EXAMPLE_LINE = '{"dataset": "gsm8k-test", "item_id": "12", "question": "...", "gold": "18"}'


@dataclass(slots=True, frozen=True)
class EvalItem:
    """One test problem: where it comes from, its text and its gold answer as written."""

    dataset: str
    item_id: str
    question: str
    gold: str


def read_items(path: Path) -> list[EvalItem]:
    """Every item of a JSON-lines file, in file order; raises `EvalInputError` on a bad line."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise EvalInputError(f"--items {path}: {what}; give a JSON-lines file of items like {EXAMPLE_LINE}")
    items: list[EvalItem] = []
    try:
        with path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                raw = line.removeprefix(b"\xef\xbb\xbf") if number == 1 else line
                if raw.strip():
                    items.append(_item(raw, f"{path}:{number}"))
    except OSError as exc:
        raise EvalInputError(f"--items {path}: cannot read it ({exc.strerror})") from None
    if not items:
        raise EvalInputError(f"--items {path}: no items; each line must be a JSON object like {EXAMPLE_LINE}")
    check_unique(items, str(path))
    return items


def items_from_records(records: Iterable[dict[str, Any]], source: str = "items") -> list[EvalItem]:
    """Items from dicts already in memory (in-process evaluation), checked like file lines."""
    items = [_from_record(record, f"{source}[{i}]") for i, record in enumerate(records)]
    check_unique(items, source)
    return items


def check_unique(items: Iterable[EvalItem], source: str) -> None:
    seen: set[tuple[str, str]] = set()
    for item in items:
        key = (item.dataset, item.item_id)
        if key in seen:
            raise EvalInputError(
                f"{source}: item {item.dataset}/{item.item_id} appears twice; item ids must be unique "
                "within a dataset"
            )
        seen.add(key)


def _item(raw: bytes, where: str) -> EvalItem:
    try:
        record = json.loads(raw)
    except UnicodeDecodeError:
        raise EvalInputError(f"{where}: not valid UTF-8; convert the file to UTF-8") from None
    except json.JSONDecodeError as exc:
        raise EvalInputError(
            f"{where}: not JSON ({exc.msg}); each line must be one JSON object like {EXAMPLE_LINE}"
        ) from None
    return _from_record(record, where)


def _from_record(record: Any, where: str) -> EvalItem:
    if not isinstance(record, dict):
        raise EvalInputError(
            f"{where}: expected a JSON object like {EXAMPLE_LINE}, got {type(record).__name__}"
        )
    values: dict[str, str] = {}
    for name in ("dataset", "item_id", "question", "gold"):
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            got = "missing" if value is None else f"a {type(value).__name__}"
            raise EvalInputError(f"{where}: field {name!r} is {got}; it must be text ({EXAMPLE_LINE})")
        text = value if isinstance(value, str) else str(value)
        if not text.strip():
            fix = "drop unlabelled items: they cannot be scored" if name == "gold" else "give a value"
            raise EvalInputError(f"{where}: field {name!r} is blank; {fix}")
        values[name] = text
    if not isinstance(record["question"], str):
        raise EvalInputError(f"{where}: field 'question' must be text")
    return EvalItem(**values)
