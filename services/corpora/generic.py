"""Generic corpora: JSON lines or CSV, with the question and answer fields named by the user.

`--answer-field` may be turned off (`--no-answer`) for an unlabelled corpus, whose problems get
gold kind `none` and are later judged by teacher consensus. Records without an id field get their
0-based position as id, so re-ingesting the same file is idempotent.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.corpora.base import BadRecord, CorpusLoader, LoaderOptions, SourceProblem, require_text
from services.corpora.jsonlines import iter_json_lines
from services.errors import BadInputError


def _make_problem(
    loader: CorpusLoader, record: dict[str, Any], index: int, location: str
) -> SourceProblem | BadRecord:
    opts = loader.options
    question = require_text(record, opts.question_field, location)
    answer = require_text(record, opts.answer_field, location) if opts.answer_field else None
    source_id = require_text(record, opts.id_field, location) if opts.id_field else str(index)
    for value in (question, answer, source_id):
        if isinstance(value, BadRecord):
            return value
    assert isinstance(question, str) and isinstance(source_id, str) and not isinstance(answer, BadRecord)
    solution = None
    if opts.solution_field is not None and record.get(opts.solution_field) not in (None, ""):
        solution = str(record[opts.solution_field])
    return SourceProblem(
        source_id=source_id,
        question=question,
        gold_answer=answer,
        location=location,
        worked_solution=solution,
    )


class _GenericLoader(CorpusLoader):
    def __init__(self, path: Path, options: LoaderOptions | None = None) -> None:
        super().__init__(path, options)
        self.ids_are_positions = self.options.id_field is None
        self.numeric_gold = self.options.numeric_gold and self.options.answer_field is not None
        self.answer_field_name = self.options.answer_field or "answer"


class JsonLinesLoader(_GenericLoader):
    format = "jsonl"
    description = "JSON lines with --question-field / --answer-field (and optional --id-field)"

    def iter_problems(self) -> Iterator[SourceProblem | BadRecord]:
        for index, item in enumerate(iter_json_lines(self.path)):
            if isinstance(item, BadRecord):
                yield item
            else:
                line_no, record = item
                yield _make_problem(self, record, index, f"line {line_no}")


class CsvLoader(_GenericLoader):
    format = "csv"
    description = "CSV with a header row, --question-field / --answer-field (and optional --id-field)"

    def iter_problems(self) -> Iterator[SourceProblem | BadRecord]:
        try:
            with self.path.open(encoding="utf-8-sig", newline="") as fh:
                reader = csv.DictReader(fh)
                header = reader.fieldnames or []
                for name, flag in self._required_columns():
                    if name not in header:
                        raise BadInputError(
                            f"{self.path}, line 1: no column {name!r} in the header "
                            f"(columns: {', '.join(header) or 'none'}); pass {flag} with one of them"
                        )
                for index, row in enumerate(reader):
                    location = f"line {reader.line_num}"
                    if None in row:  # more cells than header columns
                        yield BadRecord(location, None, "more cells than header columns")
                    else:
                        yield _make_problem(self, dict(row), index, location)
        except UnicodeDecodeError as exc:
            raise BadInputError(
                f"{self.path}: not valid UTF-8 near byte {exc.start}; convert the file to UTF-8"
            ) from None
        except csv.Error as exc:
            raise BadInputError(f"{self.path}: malformed CSV ({exc})") from None

    def _required_columns(self) -> list[tuple[str, str]]:
        opts = self.options
        cols = [(opts.question_field, "--question-field")]
        if opts.answer_field is not None:
            cols.append((opts.answer_field, "--answer-field"))
        if opts.id_field is not None:
            cols.append((opts.id_field, "--id-field"))
        return cols
