"""Reading task tables from hand-written snapshot directories, and refusing ambiguous ones."""

from __future__ import annotations

import pytest

from services.kpdd.formatting import format_student_input
from training.data import SnapshotError, TaskExample, read_tasks, snapshot_layouts


def row(task: str, mode: str, question: str, target: str, *, header: bool = True) -> dict[str, str]:
    text = format_student_input(task, mode, question)
    if not header:
        text = text.split("\n", 1)[1]
    return {"mode": mode, "input": text, "target": target, "teacher": "sim:gold"}


def test_reads_the_layouts_tables_in_order(make_snapshot):
    snapshot = make_snapshot(
        {
            "rationales": {"train": [{"mode": "cot", "input": "x", "target": "y"}]},
            "key_points": {
                "train": [
                    row("key-points", "cot", "Q1", "Core question: A"),
                    row("key-points", "pot", "Q1", "Core question: A"),
                ]
            },
            "solution": {
                "train": [row("solution", "pot", "Q1", "Solution:\n```python\nans = 1\n```")],
                "validation": [row("solution", "cot", "Q2", "Solution:\nThe answer is: 2")],
            },
        },
        layout="two-stage",
    )
    examples = read_tasks(snapshot, None)
    assert [(e.task, e.mode) for e in examples] == [
        ("key-points", "cot"),
        ("key-points", "pot"),
        ("solution", "pot"),
    ]
    assert examples[2] == TaskExample(
        "solution", "pot", "[solution | KPDD-PoT]\nProblem:\nQ1", "Solution:\n```python\nans = 1\n```"
    )
    assert [e.task for e in read_tasks(snapshot, "two-stage", modes=["pot"])] == ["key-points", "solution"]
    # The key_points table has no validation file: that task simply has no rows there.
    assert [(e.task, e.target) for e in read_tasks(snapshot, "two-stage", "validation")] == [
        ("solution", "Solution:\nThe answer is: 2")
    ]
    assert snapshot_layouts(snapshot) == ["two-stage"]


def test_a_layout_the_snapshot_lacks_is_refused_with_what_it_has(make_snapshot):
    snapshot = make_snapshot({"end_to_end": {"train": [row("end-to-end", "cot", "Q", "T")]}})
    with pytest.raises(SnapshotError, match=r"no `cascade` tables \(it has: end-to-end\)"):
        read_tasks(snapshot, "cascade")


def test_missing_validation_split_is_empty_and_missing_train_is_an_error(make_snapshot):
    snapshot = make_snapshot({"end_to_end": {"train": [row("end-to-end", "cot", "Q", "T")]}})
    assert read_tasks(snapshot, "end-to-end", "validation") == []
    only_validation = make_snapshot({"end_to_end": {"validation": [row("end-to-end", "cot", "Q", "T")]}})
    with pytest.raises(SnapshotError, match="no train file for table `end_to_end`"):
        read_tasks(only_validation, None)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_same_input_with_both_modes_is_refused(make_snapshot, fmt):
    # Two rows whose inputs are identical although their targets are CoT and PoT.
    rows = [
        {"mode": "cot", "input": "Problem:\nQ", "target": "Solution:\nThe answer is: 3"},
        {"mode": "pot", "input": "Problem:\nQ", "target": "Solution:\n```python\nans = 3\n```"},
        {"mode": "cot", "input": "Problem:\nR", "target": "Solution:\nThe answer is: 4"},
    ]
    snapshot = make_snapshot({"end_to_end": {"train": rows}}, fmt=fmt)
    with pytest.raises(SnapshotError) as caught:
        read_tasks(snapshot, None)
    message = str(caught.value)
    assert "table `end_to_end`" in message
    assert "1 inputs appear with both CoT and PoT" in message
    assert "kpdd export" in message
    # Training one mode of it is not ambiguous.
    assert len(read_tasks(snapshot, None, modes=["cot"])) == 2


def test_mixed_modes_without_headers_are_refused(make_snapshot):
    rows = [
        row("end-to-end", "cot", "Q1", "T1", header=False),
        row("end-to-end", "pot", "Q2", "T2", header=False),
    ]
    snapshot = make_snapshot({"end_to_end": {"train": rows}})
    with pytest.raises(
        SnapshotError, match=r"table `end_to_end`.*2 of 2 inputs lack the mode header.*kpdd export"
    ):
        read_tasks(snapshot, None)


def test_single_mode_without_headers_is_accepted(make_snapshot):
    rows = [row("end-to-end", "pot", f"Q{n}", f"T{n}", header=False) for n in range(3)]
    snapshot = make_snapshot({"end_to_end": {"train": rows}})
    examples = read_tasks(snapshot, "end-to-end")
    assert [e.input for e in examples] == ["Problem:\nQ0", "Problem:\nQ1", "Problem:\nQ2"]
    assert {e.mode for e in examples} == {"pot"}


def test_mixed_modes_with_headers_are_accepted(make_snapshot):
    rows = [row("end-to-end", mode, "Q", f"T-{mode}") for mode in ("cot", "pot")]
    snapshot = make_snapshot({"end_to_end": {"train": rows}})
    assert [e.mode for e in read_tasks(snapshot, None)] == ["cot", "pot"]


def test_header_that_contradicts_its_row_is_refused(make_snapshot):
    bad = row("end-to-end", "cot", "Q", "T") | {"mode": "pot"}
    snapshot = make_snapshot({"end_to_end": {"train": [bad]}})
    with pytest.raises(SnapshotError, match=r"starts with '\[end-to-end \| KPDD-CoT\]'"):
        read_tasks(snapshot, None)


def test_missing_manifest_and_bad_modes(tmp_path, make_snapshot):
    with pytest.raises(SnapshotError, match=r"manifest\.json not found"):
        read_tasks(tmp_path, None)
    snapshot = make_snapshot({"end_to_end": {"train": [row("end-to-end", "cot", "Q", "T")]}})
    with pytest.raises(ValueError, match="modes"):
        read_tasks(snapshot, None, modes=["code"])
