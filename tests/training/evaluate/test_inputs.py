"""The items file and `kpdd_student.json`: what is accepted, and the errors that name the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.evaluate.students import write_student_info
from training.evaluate.errors import EvalInputError
from training.evaluate.items import EvalItem, items_from_records, read_items
from training.evaluate.student import read_student_info, resolve_layout_mode


def _write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_items_are_read_in_order_with_numbers_as_text(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "items.jsonl",
        '\ufeff{"dataset": "svamp", "item_id": 3, "question": "Q?", "gold": 2.5}',
        "",
        '{"dataset": "svamp", "item_id": "x", "question": "R?", "gold": "9 (apples)"}',
    )
    assert read_items(path) == [
        EvalItem("svamp", "3", "Q?", "2.5"),
        EvalItem("svamp", "x", "R?", "9 (apples)"),
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[1, 2]", ":1: expected a JSON object"),
        ('{"dataset": "d", "item_id": "1", "question": "Q?"}', ":1: field 'gold' is missing"),
        ('{"dataset": "d", "item_id": "1", "question": "Q?", "gold": " "}', "drop unlabelled items"),
        ('{"dataset": "d", "item_id": "1", "question": "Q?", "gold": true}', "field 'gold' is a bool"),
    ],
)
def test_bad_item_lines_name_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = _write(tmp_path / "items.jsonl", line)
    with pytest.raises(EvalInputError) as caught:
        read_items(path)
    assert str(path) in str(caught.value) and expected in str(caught.value)


def test_duplicate_and_empty_items_are_refused(tmp_path: Path) -> None:
    record = {"dataset": "d", "item_id": "1", "question": "Q?", "gold": "1"}
    with pytest.raises(EvalInputError, match="appears twice"):
        items_from_records([record, record])
    with pytest.raises(EvalInputError, match="no items"):
        read_items(_write(tmp_path / "empty.jsonl", ""))


def test_student_info_defaults_and_checks(tmp_path: Path) -> None:
    write_student_info(tmp_path, "causal", layout="two-stage", modes=("pot",))
    info = read_student_info(tmp_path)
    assert (info.arch, info.layout, info.tasks, info.modes) == (
        "causal",
        "two-stage",
        ("key-points", "solution"),
        ("pot",),
    )
    assert resolve_layout_mode(info, None, None) == ("two-stage", "pot")
    with pytest.raises(EvalInputError, match="not trained on"):
        resolve_layout_mode(info, "cascade", None)
    with pytest.raises(EvalInputError, match="trained on pot only"):
        resolve_layout_mode(info, None, "cot")


def test_student_file_with_a_bad_field(tmp_path: Path) -> None:
    write_student_info(tmp_path, "seq2seq")
    data = json.loads((tmp_path / "kpdd_student.json").read_text())
    data["arch"] = "rnn"
    (tmp_path / "kpdd_student.json").write_text(json.dumps(data))
    with pytest.raises(EvalInputError, match="arch 'rnn' is not one of seq2seq, causal"):
        read_student_info(tmp_path)
