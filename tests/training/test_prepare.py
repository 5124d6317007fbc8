"""`python -m training.prepare`: one JSON document on success, one error line and exit 2 otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.training.snapshots import write_snapshot
from training.prepare import main

ROOT = Path(__file__).resolve().parents[2]
TINY_T5 = ROOT / "training" / "configs" / "tiny-t5.yaml"


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    return write_snapshot(tmp_path_factory.mktemp("prepare") / "snapshot")


def _prepare(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_prepare_writes_the_run_dir_and_prints_one_json_document(tmp_path, snapshot):
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "training.prepare", "--snapshot", str(snapshot), "--config", str(TINY_T5)]
    argv += [
        "--set",
        "zero.stage=3",
        "--set",
        "batch.global_batch_size=16",
        "--set",
        "batch.gradient_accumulation_steps=null",
    ]
    argv += ["--run-dir", str(run_dir), "--world-size", "2"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)  # exactly one JSON document
    assert document["world_size"] == 2
    assert document["layout"] == "end-to-end"
    assert (document["train_examples"], document["validation_examples"]) == (16, 4)
    assert document["dtype"] == "fp32"  # no GPU here
    assert document["deepspeed"]["gradient_accumulation_steps"] == 2
    assert document["deepspeed"]["zero_optimization"]["stage"] == 3
    assert document["snapshot_id"] == json.loads((snapshot / "manifest.json").read_text())["snapshot_id"]
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["data"]["snapshot"] == str(snapshot.resolve())
    assert written["data"]["layout"] == "end-to-end"
    assert written["batch"] == {
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "global_batch_size": 16,
    }
    assert json.loads((run_dir / "ds_config.json").read_text()) == document["deepspeed"]
    assert document["config"] == written


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--set", "optim.learnig_rate=1"], "optim.learnig_rate: unknown key; valid keys: model.arch"),
        (["--set", "batch.global_batch_size=10"], "global_batch_size (10) != batch.micro_batch_size (4)"),
        (["--set", "precision.dtype=fp16"], "fp16 is refused for T5"),
        (["--set", "data.layout=cascade"], "has no `cascade` tables"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, snapshot, extra, expected):
    run_dir = tmp_path / "run"
    code, out, err = _prepare(
        capsys, "--snapshot", str(snapshot), "--config", str(TINY_T5), *extra,
        "--run-dir", str(run_dir), "--world-size", "1",
    )  # fmt: skip
    assert code == 2
    assert out == ""
    assert err.startswith("kpdd: error: ") and err.count("\n") == 1
    assert expected in err
    assert not run_dir.exists()


def test_ambiguous_snapshot_is_refused(capsys, tmp_path):
    both = write_snapshot(tmp_path / "both", layout=None, tables=("end_to_end", "key_points", "solution"))
    code, _, err = _prepare(
        capsys,
        "--snapshot",
        str(both),
        "--config",
        str(TINY_T5),
        "--run-dir",
        str(tmp_path / "r"),
        "--world-size",
        "1",
    )
    assert code == 2
    assert "holds tables of 2 layouts (end-to-end, two-stage); choose one with --set data.layout" in err
    code, out, _ = _prepare(
        capsys, "--snapshot", str(both), "--config", str(TINY_T5), "--set", "data.layout=two-stage",
        "--run-dir", str(tmp_path / "r"), "--world-size", "1",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["train_examples"] == 2 * 16  # key-points and solution rows


def test_missing_snapshot_and_missing_flag(capsys, tmp_path):
    code, _, err = _prepare(
        capsys, "--snapshot", str(tmp_path / "nope"), "--config", str(TINY_T5),
        "--run-dir", str(tmp_path / "r"), "--world-size", "1",
    )  # fmt: skip
    assert code == 2 and "no such directory" in err
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(TINY_T5)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("kpdd: error: the following arguments are required")
