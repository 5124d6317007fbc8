"""Text that Postgres can store: NUL characters escaped reversibly.

Postgres `text` and `jsonb` cannot hold U+0000, and a teacher's reply (or an error body) may
carry one. Writing it as is fails with a permanent error, and a reply that cannot be recorded is
paid for again on every retry. So stored text goes through `escape_nul` and read text through
`unescape_nul` (JSON values through the `_json` pair, keys and strings alike):

- NUL becomes `ESCAPE + "0"` and the escape character itself `ESCAPE + "e"`; nothing else
  changes, and text without either character is returned as it is (every ordinary row is
  stored byte for byte as before).
- `unescape_nul(escape_nul(s)) == s` for every string `s`.

`ESCAPE` is U+E000, the first private-use character, which no tokenizer of a public model emits
on its own. The one limit: a row stored before this escaping existed that held U+E000 followed
by `0` or `e` reads back changed (none is known to exist).
"""

from __future__ import annotations

import re
from typing import Any

ESCAPE = "\ue000"
_ESCAPED = re.compile(ESCAPE + "([0e])")


def escape_nul(text: str | None) -> str | None:
    """`text` with NUL (and the escape character) escaped; None stays None."""
    if text is None or ("\x00" not in text and ESCAPE not in text):
        return text
    return text.replace(ESCAPE, ESCAPE + "e").replace("\x00", ESCAPE + "0")


def unescape_nul(text: str | None) -> str | None:
    """The text `escape_nul` was given."""
    if text is None or ESCAPE not in text:
        return text
    return _ESCAPED.sub(lambda m: "\x00" if m.group(1) == "0" else ESCAPE, text)


def escape_nul_json(value: Any) -> Any:
    """A JSON value (dicts, lists, strings, numbers) with every string and key escaped."""
    return _walk(value, escape_nul)


def unescape_nul_json(value: Any) -> Any:
    return _walk(value, unescape_nul)


def _walk(value: Any, convert: Any) -> Any:
    if isinstance(value, str):
        return convert(value)
    if isinstance(value, dict):
        return {convert(k) if isinstance(k, str) else k: _walk(v, convert) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, convert) for v in value]
    return value


__all__ = ["ESCAPE", "escape_nul", "escape_nul_json", "unescape_nul", "unescape_nul_json"]
