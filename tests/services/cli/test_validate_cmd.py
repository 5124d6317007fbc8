"""`kpdd validate`: one verdict per input line, in order, bad lines included; programs in the
real sandbox; unlabelled lines by consensus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.cli.main import main
from services.cli.validate_cmd import MAX_LINE_BYTES


def _write(path: Path, lines: list[Any]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line if isinstance(line, str) else json.dumps(line))
            fh.write("\n")
    return path


def _verdicts(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_cot_lines_and_bad_lines_get_one_verdict_each_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write(
        tmp_path / "in.jsonl",
        [
            {"id": "a", "gold": "18", "response": "She makes 9 * 2 = 18 dollars.\n#### 18"},
            {"id": "b", "gold": "1,000", "response": "The answer is \\boxed{999}."},
            "{not json",
            "",
            [1, 2],
            {"id": "c", "gold": "2:3", "response": 7},
            {"id": "d", "gold": ["x"], "response": "18"},
            {"id": "e", "response": "#### 5"},
            {"id": "f", "gold": "5", "response": "#### 5", "program": "ans = 5"},
            {"id": "g", "gold": 12.5, "response": "The answer is 25/2."},
            {"id": "h", "gold": "3:30 p.m.", "response": "She arrives at 3:30 PM."},
            {"id": "i", "gold": "7", "response": "First 3 + 4 makes 7"},
        ],
    )
    assert main(["validate", str(source)]) == 0
    captured = capsys.readouterr()
    verdicts = _verdicts(captured.out)
    assert [v["line"] for v in verdicts] == list(range(1, 13))
    by_line = {v["line"]: v for v in verdicts}
    assert (by_line[1]["id"], by_line[1]["kind"], by_line[1]["value"], by_line[1]["marker"]) == (
        "a",
        "match",
        "18",
        "hashes",
    )
    assert (by_line[2]["kind"], by_line[2]["extracted"], by_line[2]["details"]["gold"]) == (
        "mismatch",
        "999",
        "1000",
    )
    assert by_line[3]["kind"] == "bad_input" and "malformed JSON" in by_line[3]["details"]["reason"]
    assert by_line[4]["kind"] == "bad_input" and "blank" in by_line[4]["details"]["reason"]
    assert "JSON object" in by_line[5]["details"]["reason"]
    assert "'response' must be a string" in by_line[6]["details"]["reason"]
    assert "'gold' must be text or a number" in by_line[7]["details"]["reason"]
    assert "missing field 'gold'" in by_line[8]["details"]["reason"]
    assert "not both" in by_line[9]["details"]["reason"]
    assert (by_line[10]["kind"], by_line[10]["method"]) == ("match", "exact")
    assert (by_line[11]["kind"], by_line[11]["method"]) == ("match", "clock")
    assert all(v["match"] == (v["kind"] == "match") for v in verdicts)
    assert (by_line[12]["kind"], by_line[12]["confidence"]) == ("match", "low")
    assert "12 line(s)" in captured.err and "bad_input 7" in captured.err
    low = sum(v.get("confidence") == "low" for v in verdicts)
    assert low == 2  # line 12, and line 11 (a clock time with no answer marker)
    assert f"; {low} read through the low-confidence last-number fallback" in captured.err


def test_out_file_and_programs_run_in_the_sandbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _write(
        tmp_path / "pot.jsonl",
        [
            {"id": 1, "gold": "72", "program": "step_1 = 48 / 2\nans = step_1 + 48\n"},
            {"id": 2, "gold": "0.3", "program": "ans = 0.1 * 3"},
            {"id": 3, "gold": "36 (years old); 12 (years old)", "program": "ans = [36, 12]"},
            {"id": 4, "gold": "5", "program": "raise ValueError('boom')"},
            {"id": 5, "gold": "5", "program": "while True:\n    pass\n"},
            {"id": 6, "gold": "5", "program": "x = 5"},
            {"id": 7, "gold": "-1", "program": "import os\nans = len(os.listdir('/root'))"},
            {"id": 8, "gold": "Yes", "program": "ans = True"},
        ],
    )
    out = tmp_path / "verdicts.jsonl"
    code = main(["validate", str(source), "--out", str(out), "--timeout", "1", "--batch-size", "3"])
    assert code == 0
    assert capsys.readouterr().out == ""
    verdicts = {v["id"]: v for v in _verdicts(out.read_text())}
    assert [v["line"] for v in _verdicts(out.read_text())] == list(range(1, 9))
    assert (verdicts[1]["kind"], verdicts[1]["value"], verdicts[1]["marker"]) == ("match", "72", "program")
    assert verdicts[2]["kind"] == "match"  # float read at 12 significant digits
    assert verdicts[3]["kind"] == "match"
    assert verdicts[4]["kind"] == "error" and verdicts[4]["details"]["error_type"] == "ValueError"
    assert verdicts[5]["kind"] == "timeout"
    assert verdicts[6]["kind"] == "no_answer"
    assert not verdicts[7]["match"]  # whatever the sandbox allowed, never a crash of the run
    assert verdicts[8]["kind"] == "match"


def test_unlabelled_lines_are_judged_by_consensus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _write(
        tmp_path / "unlabelled.jsonl",
        [
            {"problem_id": "p1", "gold": None, "response": "The answer is 18."},
            {"id": "labelled", "gold": "4", "response": "#### 4"},
            {"problem_id": "p1", "gold": None, "response": "\\boxed{18.0}"},
            {"problem_id": "p1", "response": "The answer is 20."},
            {"problem_id": "p2", "gold": "", "response": "#### 1"},
            {"problem_id": "p2", "gold": None, "response": "#### 2"},
            {"gold": None, "response": "#### 3"},
        ],
    )
    assert main(["validate", str(source), "--min-agreement", "0.6"]) == 0
    verdicts = _verdicts(capsys.readouterr().out)
    assert [v["line"] for v in verdicts] == list(range(1, 8))
    p1 = [verdicts[0], verdicts[2], verdicts[3]]
    assert [v["kind"] for v in p1] == ["match", "match", "mismatch"]
    for v in p1:
        assert v["method"] == "consensus"
        assert v["details"]["pseudo_gold"] == "18"
        assert v["details"]["agreement"] == pytest.approx(2 / 3, abs=1e-4)
        assert (v["details"]["votes"], v["details"]["samples"]) == (2, 3)
    assert p1[0]["details"]["compared_by"] == "exact"
    assert verdicts[1]["kind"] == "match" and verdicts[1]["method"] == "exact"
    assert [v["kind"] for v in verdicts[4:6]] == ["no_consensus", "no_consensus"]
    assert "tie" in verdicts[4]["details"]["reason"]
    assert verdicts[6]["kind"] == "no_gold"

    # A stricter threshold refuses the same vote.
    assert main(["validate", str(source), "--min-agreement", "0.9"]) == 0
    strict = _verdicts(capsys.readouterr().out)
    assert strict[0]["kind"] == "no_consensus"
    assert "below min_agreement" in strict[0]["details"]["reason"]


def test_input_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    source = _write(tmp_path / "in.jsonl", [{"gold": "1", "response": "1"}])
    assert main(["validate", str(source), "--min-agreement", "1.5"]) == 2
    assert "--min-agreement" in capsys.readouterr().err
    assert main(["validate", str(source), "--out", str(tmp_path / "no" / "dir" / "out.jsonl")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_oversized_and_hostile_lines_do_not_stop_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "hostile.jsonl"
    with source.open("wb") as fh:
        fh.write(b'{"gold": "1", "response": "' + b"9" * (MAX_LINE_BYTES + 1) + b'"}\n')  # over the line cap
        fh.write(json.dumps({"gold": "18", "response": "9" * 500_000}).encode() + b"\n")  # too long
        fh.write(json.dumps({"gold": "18", "response": "\\boxed{" + "9^" * 100 + "9}"}).encode() + b"\n")
        fh.write(b'{"gold": "1", "response": "\xff\xfe"}\n')
        fh.write(json.dumps({"gold": "18", "response": "#### 18"}).encode() + b"\n")
    assert main(["validate", str(source)]) == 0
    verdicts = _verdicts(capsys.readouterr().out)
    assert [v["kind"] for v in verdicts] == ["bad_input", "too_long", "no_answer", "bad_input", "match"]
    assert "longer than 8 MiB" in verdicts[0]["details"]["reason"]
    assert "UTF-8" in verdicts[3]["details"]["reason"]
