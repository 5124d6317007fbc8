"""Loaders and gold normalisation, without a database."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from services.corpora.base import BadRecord, LoaderOptions, SourceProblem
from services.corpora.gsm8k import calculator_notes, program_from_solution, solution_steps
from services.corpora.registry import LOADERS, get_loader
from services.errors import BadInputError
from services.validation.numbers import normalise_gold, parse_number

SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


@pytest.mark.parametrize(
    ("raw", "kind", "value"),
    [
        ("72", "number", "72"),
        ("1,000", "number", "1000"),
        ("-3", "number", "-3"),
        ("51.0", "number", "51"),
        ("0.25", "number", "1/4"),
        ("5/2", "number", "5/2"),
        ("9 (apples)", "number", "9"),
        ("-(1/3)", "number", "-1/3"),
        ("14  (seats)", "number", "14"),
        ("$1,234.50", "number", "2469/2"),
        ("2:3", "text", "2:3"),
        ("3:30 p.m.", "text", "3:30 p.m"),
        ("They are equal", "text", "they are equal"),
        ("36 (years old); 12 (years old)", "text", "36; 12"),
        ("1,23", "text", "1,23"),
        (None, "none", None),
        ("  ", "none", None),
    ],
)
def test_normalise_gold(raw: str | None, kind: str, value: str | None) -> None:
    gold = normalise_gold(raw)
    assert (gold.kind, gold.value) == (kind, value)


def test_parse_number_is_exact_and_bounded() -> None:
    assert parse_number("0.1") == Fraction(1, 10)
    assert parse_number("1e-3") == Fraction(1, 1000)
    assert parse_number("\u22125") == -5
    assert parse_number("1" * 10_000) is None  # hostile length: refused, not parsed


def test_calculator_notes_and_program() -> None:
    notes = calculator_notes(SOLUTION)
    assert [(n.expression, n.result) for n in notes] == [("48/2", "24"), ("48+24", "72")]
    assert solution_steps(SOLUTION) == [
        "Natalia sold 48/2 = 24 clips in May.",
        "Natalia sold 48+24 = 72 clips altogether in April and May.",
    ]
    program = program_from_solution(SOLUTION, "72")
    assert program == "step_1 = 48/2\nstep_2 = 48+step_1\nans = step_2\n"


def test_program_falls_back_to_gold_when_notes_disagree() -> None:
    assert program_from_solution("It is <<2+2=5>>5.\n#### 4", "4").endswith("ans = 4\n")


def test_registry_names_every_format() -> None:
    assert set(LOADERS) == {"gsm8k", "svamp", "asdiv", "multiarith", "jsonl", "csv"}
    with pytest.raises(BadInputError, match="unknown corpus format 'nope'; choose one of"):
        get_loader("nope")


def _records(fmt: str, path: Path, **opts: object) -> list[SourceProblem | BadRecord]:
    return list(get_loader(fmt)(path, LoaderOptions(**opts)).iter_problems())  # type: ignore[arg-type]


def test_generic_jsonl_with_fields_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"q": "1+1?", "a": 2, "id": "x1"}\n\n{"q": "2+2?", "a": "4", "id": "x2"}\n')
    rows = _records("jsonl", path, question_field="q", answer_field="a", id_field="id")
    assert [(r.source_id, r.question, r.gold_answer, r.location) for r in rows] == [  # type: ignore[union-attr]
        ("x1", "1+1?", "2", "line 1"),
        ("x2", "2+2?", "4", "line 3"),
    ]


def test_generic_csv_unlabelled(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('question,other\n"How many, in all?",x\nWhat is 3?,y\n')
    rows = _records("csv", path, answer_field=None)
    assert [(r.source_id, r.question, r.gold_answer) for r in rows] == [  # type: ignore[union-attr]
        ("0", "How many, in all?", None),
        ("1", "What is 3?", None),
    ]


def test_asdiv_streams_records_with_units_and_text(datasets_dir: Path) -> None:
    rows = _records("asdiv", datasets_dir / "asdiv" / "ASDiv.xml")
    first = rows[0]
    assert isinstance(first, SourceProblem)
    assert first.source_id == "nluds-0001"
    assert first.question == (
        "Seven red apples and two green apples are in the basket. How many apples are in the basket?"
    )
    assert first.gold_answer == "9 (apples)"
    assert first.extra == {"formula": "7+2=9", "solution_type": "Addition", "grade": "1"}
