"""The fixed-format evaluation corpora: SVAMP (JSON), MultiArith (JSON) and ASDiv (XML).

They are small, fixed-size files: SVAMP and MultiArith are parsed whole; ASDiv is streamed with
`iterparse` all the same. Numeric answers given as JSON floats are kept as their shortest
decimal text (`51.0` -> `"51.0"`), which normalises exactly (`"51"`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import orjson

from services.corpora.base import BadRecord, CorpusLoader, SourceProblem, require_text
from services.errors import BadInputError


class _JsonArrayLoader(CorpusLoader):
    """A JSON file holding one array of objects."""

    def records(self) -> list[Any]:
        text = self.read_text()
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise BadInputError(
                f"{self.path}: malformed JSON ({exc}); expected one JSON array of problems"
            ) from None
        if not isinstance(data, list):
            raise BadInputError(f"{self.path}: expected a JSON array of problems, got {type(data).__name__}")
        if not data:
            raise BadInputError(f"{self.path}: the array is empty; nothing to ingest")
        return data


def _answer_text(value: Any, location: str, field: str) -> str | BadRecord:
    if value is None:
        return BadRecord(location, field, f"missing field {field!r}")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return BadRecord(location, field, f"expected a number, got {type(value).__name__}")
    return repr(value) if isinstance(value, float) else str(value).strip()


class SVAMPLoader(_JsonArrayLoader):
    format = "svamp"
    description = "SVAMP JSON array: ID, Body, Question, Equation, Answer (problem = Body + Question)"
    default_split = "test"
    answer_field_name = "Answer"

    def iter_problems(self) -> Iterator[SourceProblem | BadRecord]:
        for index, record in enumerate(self.records()):
            if not isinstance(record, dict):
                yield BadRecord(f"record #{index}", None, "expected a JSON object")
                continue
            location = f"record {record.get('ID', f'#{index}')}"
            fields = [require_text(record, k, location) for k in ("ID", "Body", "Question")]
            answer = _answer_text(record.get("Answer"), location, "Answer")
            bad = next((f for f in [*fields, answer] if isinstance(f, BadRecord)), None)
            if bad is not None:
                yield bad
                continue
            source_id, body, question = (str(f) for f in fields)
            yield SourceProblem(
                source_id=source_id,
                question=f"{body} {question}",
                gold_answer=str(answer),
                location=location,
                extra={"equation": record.get("Equation"), "type": record.get("Type")},
            )


class MultiArithLoader(_JsonArrayLoader):
    format = "multiarith"
    description = "MultiArith JSON array: iIndex, sQuestion, lEquations, lSolutions (gold = lSolutions[0])"
    default_split = "test"
    answer_field_name = "lSolutions"

    def iter_problems(self) -> Iterator[SourceProblem | BadRecord]:
        for index, record in enumerate(self.records()):
            if not isinstance(record, dict):
                yield BadRecord(f"record #{index}", None, "expected a JSON object")
                continue
            location = f"record {record.get('iIndex', f'#{index}')}"
            source_id = record.get("iIndex")
            question = require_text(record, "sQuestion", location)
            solutions = record.get("lSolutions")
            if source_id is None:
                yield BadRecord(location, "iIndex", "missing field 'iIndex'")
            elif isinstance(question, BadRecord):
                yield question
            elif not isinstance(solutions, list) or not solutions:
                yield BadRecord(location, "lSolutions", "missing or empty list of solutions")
            else:
                answer = _answer_text(solutions[0], location, "lSolutions")
                if isinstance(answer, BadRecord):
                    yield answer
                    continue
                yield SourceProblem(
                    source_id=str(source_id),
                    question=question,
                    gold_answer=answer,
                    location=location,
                    extra={"equations": record.get("lEquations")},
                )


class ASDivLoader(CorpusLoader):
    format = "asdiv"
    description = "ASDiv XML: <Problem ID> with Body, Question, Answer like '9 (apples)', Formula"
    default_split = "test"
    # ASDiv has names, yes/no, times, ratios and multi-value answers: see normalise_gold.
    numeric_gold = False
    answer_field_name = "Answer"

    def iter_problems(self) -> Iterator[SourceProblem | BadRecord]:
        count = 0
        try:
            for _event, elem in ET.iterparse(self.path, events=("end",)):
                if elem.tag != "Problem":
                    continue
                count += 1
                yield self._problem(elem, count)
                elem.clear()
        except ET.ParseError as exc:
            line, _col = exc.position
            raise BadInputError(
                f"{self.path}, line {line}: malformed XML ({exc.msg if hasattr(exc, 'msg') else exc}); "
                "the file must be ASDiv's original XML"
            ) from None
        if count == 0:
            raise BadInputError(f"{self.path}: no <Problem> elements found; is this ASDiv's XML?")

    def _problem(self, elem: ET.Element, count: int) -> SourceProblem | BadRecord:
        source_id = elem.get("ID")
        location = f"record {source_id or f'#{count}'}"
        if not source_id:
            return BadRecord(location, "ID", "missing attribute 'ID'")
        texts = {}
        for tag in ("Body", "Question", "Answer"):
            node = elem.find(tag)
            text = (node.text or "").strip() if node is not None else ""
            if not text:
                return BadRecord(location, tag, f"missing or empty <{tag}>")
            texts[tag] = " ".join(text.split())
        formula = elem.find("Formula")
        solution_type = elem.find("Solution-Type")
        return SourceProblem(
            source_id=source_id,
            question=f"{texts['Body']} {texts['Question']}",
            gold_answer=texts["Answer"],
            location=location,
            extra={
                "formula": formula.text.strip() if formula is not None and formula.text else None,
                "solution_type": solution_type.text if solution_type is not None else None,
                "grade": elem.get("Grade"),
            },
        )
