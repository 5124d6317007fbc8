"""`python -m training.evaluate` end to end on GSM8K test items with tiny untrained students,
and its input errors (one line, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.evaluate.students import write_student_info
from training.evaluate.judging import FAILURE_KINDS, PREDICTION_KINDS

REPO_ROOT = Path(__file__).resolve().parents[3]


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.evaluate", *map(str, args)],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _read_outputs(out: Path) -> tuple[list[dict], dict]:
    lines = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines], json.loads((out / "results.json").read_text())


def _check_counts(results: dict, n: int) -> None:
    assert results["n"] == n
    for block in [*results["datasets"].values(), results["overall"]]:
        assert set(block["failures"]) == set(FAILURE_KINDS)
        assert block["correct"] + sum(block["failures"].values()) == block["n"]
    assert sum(block["n"] for block in results["datasets"].values()) == n


def test_untrained_seq2seq_student_scores_zero(
    seq2seq_student: Path, items_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    done = run_cli("--model", seq2seq_student, "--items", items_file, "--out", out, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "gsm8k-test" in done.stderr and "overall" in done.stderr
    predictions, results = _read_outputs(out)
    assert [p["item_id"] for p in predictions] == [str(i) for i in range(6)]
    _check_counts(results, 6)
    assert results["layout"] == "end-to-end" and results["mode"] == "cot"
    assert results["model"] == str(seq2seq_student) and results["snapshot_id"] == "test-snapshot"
    assert results["datasets"]["gsm8k-test"]["accuracy"] == 0.0
    # Random text has no key-point sections: every item fails to parse, and says so.
    assert results["overall"]["failures"]["no_answer"] == 6
    assert results["generation"]["max_new_tokens"] == 16
    for prediction in predictions:
        assert prediction["kind"] == "no_answer" and prediction["failed_stage"] == "end-to-end"
        [stage] = prediction["stages"]
        assert stage["input"].startswith("[end-to-end | KPDD-CoT]\nProblem:\n")
        assert stage["input"].endswith(prediction["question"])
        assert stage["new_tokens"] <= 16


def test_causal_cascade_pot_json(causal_student: Path, items_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    done = run_cli(
        "--model", causal_student, "--items", items_file, "--out", out,
        "--batch-size", "4", "--max-new-tokens", "10", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    predictions, results = _read_outputs(out)
    assert json.loads(done.stdout) == results
    _check_counts(results, 6)
    assert (results["layout"], results["mode"]) == ("cascade", "pot")
    assert results["overall"]["correct"] == 0
    tasks = ["core-question", "solving-info", "solution"]
    for prediction in predictions:
        assert prediction["kind"] in PREDICTION_KINDS and prediction["kind"] != "correct"
        stages = prediction["stages"]
        assert [s["task"] for s in stages] == tasks[: len(stages)]
        if prediction["kind"] == "no_answer":
            assert prediction["failed_stage"] == stages[-1]["task"]
            assert stages[-1]["error"]
        # A parsed core question is part of the next stage's input.
        if len(stages) > 1:
            assert f"Core question: {stages[0]['parsed']}" in stages[1]["input"]


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kpdd: error: "), done.stderr
    assert done.stdout == ""
    return lines[0]


def test_missing_model_dir(items_file: Path, tmp_path: Path) -> None:
    line = _one_error_line(
        run_cli("--model", tmp_path / "nope", "--items", items_file, "--out", tmp_path / "o")
    )
    assert str(tmp_path / "nope") in line and "no such directory" in line


def test_model_dir_without_student_file(items_file: Path, tmp_path: Path) -> None:
    (tmp_path / "bare").mkdir()
    line = _one_error_line(
        run_cli("--model", tmp_path / "bare", "--items", items_file, "--out", tmp_path / "o")
    )
    assert "kpdd_student.json" in line and "kpdd train" in line


def test_unknown_layout(items_file: Path, tmp_path: Path) -> None:
    write_student_info(tmp_path / "s", "seq2seq")
    line = _one_error_line(
        run_cli(
            "--model", tmp_path / "s", "--items", items_file, "--out", tmp_path / "o", "--layout", "zigzag"
        )
    )
    assert "--layout 'zigzag'" in line and "cascade" in line


def test_item_line_not_json(tmp_path: Path, items_file: Path) -> None:
    write_student_info(tmp_path / "s", "seq2seq")
    lines = items_file.read_text().splitlines()
    lines[1] = '{"dataset": "gsm8k-test", "item_id": '
    items_file.write_text("\n".join(lines) + "\n")
    line = _one_error_line(run_cli("--model", tmp_path / "s", "--items", items_file, "--out", tmp_path / "o"))
    assert f"{items_file}:2: not JSON" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], "choose one with --mode"),
        (["--mode", "sql"], "--mode 'sql' is unknown"),
        (["--batch-size", "x"], "--batch-size: invalid int value"),
    ],
)
def test_flag_errors(flags: list[str], expected: str, items_file: Path, tmp_path: Path) -> None:
    write_student_info(tmp_path / "s", "seq2seq", modes=("cot", "pot"))
    line = _one_error_line(
        run_cli("--model", tmp_path / "s", "--items", items_file, "--out", tmp_path / "o", *flags)
    )
    assert expected in line
