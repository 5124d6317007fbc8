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

    Reads in binary and decodes line by line (`json_object`), so memory stays flat and an
    encoding error names its line.
    """
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            raw = line[len(_BOM) :] if line_no == 1 and line.startswith(_BOM) else line
            if not raw.strip():
                continue
            try:
                yield line_no, json_object(raw)
            except ValueError as exc:
                yield BadRecord(f"line {line_no}", None, str(exc))


def json_object(raw: bytes) -> dict[str, Any]:
    """One line's JSON object. Raises ValueError with a message for the file's author: not valid
    UTF-8 (with the fix), malformed JSON (with orjson's reason), or a JSON value that is not an
    object. orjson rejects invalid UTF-8 itself; the message says which."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not valid UTF-8; convert the file to UTF-8 (e.g. iconv)") from None
        raise ValueError(f"malformed JSON ({str(exc).split(':')[0]})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj
