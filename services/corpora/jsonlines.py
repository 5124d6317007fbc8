"""Streaming JSON-lines reading with per-line errors (bad UTF-8, bad JSON, not an object)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from services.corpora.base import BadRecord

_BOM = b"\xef\xbb\xbf"


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]] | BadRecord]:
    """Yield `(line_number, object)` for each non-blank line, or a BadRecord for a bad one.

    Reads in binary and decodes line by line, so memory stays flat and an encoding error names
    its line. orjson rejects invalid UTF-8 itself; the message says which.
    """
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            raw = line[len(_BOM) :] if line_no == 1 and line.startswith(_BOM) else line
            if not raw.strip():
                continue
            location = f"line {line_no}"
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield BadRecord(location, None, "not valid UTF-8; convert the file to UTF-8 (e.g. iconv)")
                    continue
                yield BadRecord(location, None, f"malformed JSON ({exc.args[0].split(':')[0]})")
                continue
            if not isinstance(obj, dict):
                yield BadRecord(location, None, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield line_no, obj
