"""The whole loop as a user runs it: `kpdd train` (a real DeepSpeed launch on CPU) on snapshots
exported by `kpdd export` from real generation jobs against the teacher simulator, then
`kpdd eval` through generation, sandbox execution and answer matching.

The memorisation tests are the ones that prove tokenisation, loss masking, generation, program
extraction, execution and judging agree with each other: a tiny student trained until it
memorises its rationales must then solve exactly those problems (at least 90%), and the same
student before training (the same architecture, tokenizer and initial weights: one step at a
learning rate of 1e-12) must solve none.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from tests.services.training.conftest import export_snapshot, kpdd_cli

CONFIGS = Path(__file__).resolve().parents[3] / "training" / "configs"
# A student big enough to memorise 32 programs in a few hundred CPU steps (about 0.8 M parameters).
MEMORISE = [
    "--set", "model.d_model=128", "--set", "model.layers=4", "--set", "batch.micro_batch_size=8",
    "--set", "optim.lr=3e-3", "--set", "train.log_every_steps=25", "--set", "train.save_every_steps=100000",
]  # fmt: skip


def _env(tmp_path: Path, datasets_dir: Path) -> dict[str, str]:
    return {"KPDD_DATA_DIR": str(tmp_path / "kpdd-data"), "KPDD_DATASETS_DIR": str(datasets_dir)}


def _train(env: dict[str, str], snapshot: Path, *args: str) -> dict:
    proc = kpdd_cli(
        ["train", "--snapshot", str(snapshot), "--config", str(CONFIGS / "tiny-llama.yaml"), *args, "--json"],
        env,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return orjson.loads(proc.stdout)


def _eval(env: dict[str, str], model: Path, *args: str) -> dict:
    proc = kpdd_cli(["eval", "--model", str(model), *args, "--json"], env, check=False)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return orjson.loads(proc.stdout)


def test_kpdd_train_two_processes_records_the_run_and_evaluates_it(
    pot_snapshot: Path, tmp_path: Path, datasets_dir: Path
) -> None:
    env = _env(tmp_path, datasets_dir)
    run = _train(
        env, pot_snapshot, "--num-gpus", "2", "--set", "train.max_steps=12",
        "--set", "train.log_every_steps=2", "--eval", "gsm8k-train", "--eval-limit", "3",
    )  # fmt: skip
    assert run["state"] == "succeeded" and run["reason"] is None
    assert run["world_size"] == 2 and run["layout"] == "end-to-end" and run["step"] == 12
    assert run["last_loss"] < run["metrics"]["first_loss"]
    assert run["tokens_per_s_per_gpu"] > 0 and run["peak_memory_bytes"] > 0
    run_dir = Path(run["run_dir"])
    for name in ("config.yaml", "ds_config.json", "metrics.jsonl", "status.json", "launcher.log"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    deepspeed = json.loads((run_dir / "ds_config.json").read_text())
    assert (
        deepspeed["train_batch_size"]
        == 2 * deepspeed["train_micro_batch_size_per_gpu"] * deepspeed["gradient_accumulation_steps"]
    )
    [evaluation] = run["evaluation_results"]
    assert evaluation["state"] == "succeeded"
    assert evaluation["results"]["datasets"]["gsm8k-train"]["n"] == 3
    assert (Path(evaluation["out_dir"]) / "predictions.jsonl").read_text().count("\n") == 3
    listed = orjson.loads(kpdd_cli(["runs", "--json"], env).stdout)["runs"]
    assert [r["run_id"] for r in listed] == [run["run_id"]]
    assert listed[0]["accuracy"] == {
        "gsm8k-train": evaluation["results"]["datasets"]["gsm8k-train"]["accuracy"]
    }


def test_a_bad_config_fails_the_run_with_the_field_named(
    pot_snapshot: Path, tmp_path: Path, datasets_dir: Path
) -> None:
    env = _env(tmp_path, datasets_dir)
    proc = kpdd_cli(
        ["train", "--snapshot", str(pot_snapshot), "--config", str(CONFIGS / "tiny-llama.yaml"),
         "--num-gpus", "2", "--set", "batch.global_batch_size=7"],
        env,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "global_batch_size" in proc.stderr and "7" in proc.stderr
    [run] = orjson.loads(kpdd_cli(["runs", "--json"], env).stdout)["runs"]
    assert run["state"] == "failed" and "global_batch_size" in run["reason"]


def _memorise_and_score(
    env: dict[str, str], snapshot: Path, steps: int, problems: int, *extra: str
) -> tuple[dict, dict, dict]:
    trained = _train(env, snapshot, "--set", f"train.max_steps={steps}", *MEMORISE, *extra)
    assert trained["state"] == "succeeded"
    untrained = _train(
        env, snapshot, "--set", "train.max_steps=1", *MEMORISE, "--set", "optim.lr=1e-12", *extra
    )
    args = ["--dataset", "gsm8k-train", "--limit", str(problems), "--mode", "pot", "--batch-size", "16"]
    after = _eval(env, Path(trained["final_dir"]), *args)
    before = _eval(env, Path(untrained["final_dir"]), *args)
    return trained, after, before


@pytest.mark.slow
def test_memorisation_end_to_end_pot(pot_snapshot: Path, tmp_path: Path, datasets_dir: Path) -> None:
    """32 PoT rationales memorised, then exactly those 32 problems (GSM8K train lines 0-31,
    which the snapshot was generated from) solved through generation, the sandbox and matching."""
    env = _env(tmp_path, datasets_dir)
    trained, after, before = _memorise_and_score(env, pot_snapshot, 300, 32)
    assert trained["last_loss"] < 0.1
    assert after["overall"]["n"] == 32
    assert after["overall"]["accuracy"] >= 0.9, after["overall"]
    assert before["overall"]["correct"] == 0, before["overall"]
    predictions = Path(after["out_dir"]) / "predictions.jsonl"
    first = orjson.loads(predictions.read_text().splitlines()[0])
    assert first["item_id"] == "0" and first["kind"] == "correct" and "ans" in first["program"]


@pytest.mark.slow
def test_memorisation_two_stage_chain(tmp_path: Path, datasets_dir: Path) -> None:
    """The two-stage chain: the key-point extractor's output becomes the solver's input."""
    env = _env(tmp_path, datasets_dir)
    snapshot = export_snapshot(
        tmp_path / "gen",
        datasets_dir,
        problems=16,
        mode="pot",
        layout="two-stage",
        out=tmp_path / "two-stage",
    )
    trained, after, before = _memorise_and_score(env, snapshot, 300, 16)
    assert trained["layout"] == "two-stage"
    assert after["layout"] == "two-stage" and after["overall"]["n"] == 16
    assert after["overall"]["accuracy"] >= 0.9, after["overall"]
    assert before["overall"]["correct"] == 0
    line = orjson.loads((Path(after["out_dir"]) / "predictions.jsonl").read_text().splitlines()[0])
    stages = line["stages"]
    assert [s["task"] for s in stages] == ["key-points", "solution"]
    assert stages[1]["input"].startswith("[solution | KPDD-PoT]\nProblem:\n")
    assert "Core question:" in stages[1]["input"]
