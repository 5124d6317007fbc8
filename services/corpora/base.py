"""The corpus-loader contract: one abstract method, `iter_problems()`.

A loader streams a source file and yields, in source order, a `SourceProblem` for every good
record and a `BadRecord` for every bad one (so `--skip-invalid` can go on past it). Errors that
concern the whole file (missing, empty, wrong encoding, not the expected container) raise
`BadInputError` at once. Every message names the file and the line or record id.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from services.errors import BadInputError


@dataclass(slots=True)
class SourceProblem:
    """One problem as a corpus gives it, before normalisation."""

    source_id: str
    question: str
    gold_answer: str | None
    location: str  # "line 12" or "record nluds-0001": where it came from, for messages
    worked_solution: str | None = None
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class BadRecord:
    """A record that cannot be ingested, and why."""

    location: str
    field: str | None
    reason: str

    def describe(self, path: Path) -> str:
        where = f"{path}, {self.location}"
        if self.field:
            where += f", field {self.field!r}"
        return f"{where}: {self.reason}"


@dataclass(slots=True)
class LoaderOptions:
    """Options of the generic formats; the fixed formats ignore them."""

    question_field: str = "question"
    answer_field: str | None = "answer"
    id_field: str | None = None
    solution_field: str | None = None
    numeric_gold: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class CorpusLoader(ABC):
    """Reads one source file. Subclasses set `format` and implement `iter_problems`."""

    format: ClassVar[str]
    description: ClassVar[str]
    # The split used when the user gives none (e.g. "test" for an evaluation-only corpus).
    default_split: ClassVar[str] = "train"
    # Whether every gold answer must be one number (an "unparseable gold" is then a bad record).
    numeric_gold: bool = True
    # The source's name for the answer field, for messages.
    answer_field_name: str = "answer"
    # True when ids are record positions, hence unique by construction (no duplicate tracking).
    ids_are_positions: bool = False

    def __init__(self, path: Path, options: LoaderOptions | None = None) -> None:
        self.path = path
        self.options = options or LoaderOptions()
        if not path.exists():
            raise BadInputError(f"{path}: no such file; check the path (relative to {Path.cwd()})")
        if path.is_dir():
            raise BadInputError(f"{path}: is a folder; give the corpus file inside it")
        if path.stat().st_size == 0:
            raise BadInputError(f"{path}: the file is empty; nothing to ingest")

    @abstractmethod
    def iter_problems(self) -> Iterator[SourceProblem | BadRecord]:
        """Yield every record of the file, good or bad, in source order."""

    def read_text(self) -> str:
        """The whole file as UTF-8 (for small container formats), with a clear error otherwise."""
        data = self.path.read_bytes()
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise BadInputError(
                f"{self.path}, line {line}: not valid UTF-8 (byte {exc.start}); "
                "convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8`"
            ) from None


def require_text(record: dict[str, Any], key: str, location: str) -> str | BadRecord:
    """`record[key]` as stripped text, or a BadRecord saying it is missing or not text."""
    if key not in record or record[key] is None:
        return BadRecord(location, key, f"missing field {key!r}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return BadRecord(location, key, f"expected text, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        return BadRecord(location, key, "is empty")
    return text
