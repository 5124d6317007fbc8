"""Real launches of `training.train` on CPU: `deepspeed --num_gpus 2` (two processes, gloo) and a
plain single process, with tiny T5 and Llama students trained from a hand-written snapshot.

The runs are module-scoped and shared by the assertions:

- `t5_zero2`: T5, ZeRO-2, 2 processes x micro 2 x accumulation 2, 40 steps;
- `t5_one_process`: the same rows per step from 1 process x micro 2 x accumulation 4, whose
  losses must equal `t5_zero2`'s at every step (data-parallel averaging compensated);
- `llama_zero3`: Llama, ZeRO-3 with gradient checkpointing, dropout and validation loss, 2
  processes;
- `llama_zero3_resumed`: the same run stopped after step 20 (`--stop-after-step`) and continued
  with `--resume auto`, whose losses must equal the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.snapshots import write_snapshot

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "training" / "configs"
DEEPSPEED = Path(sys.executable).with_name("deepspeed")
STEPS, SAVE_EVERY = 40, 20
COMMON = [
    f"train.max_steps={STEPS}",
    f"train.save_every_steps={SAVE_EVERY}",
    "train.log_every_steps=1",
    "train.samples=2",
    "batch.micro_batch_size=2",
    "data.max_target_tokens=160",
    "data.tokenizer_vocab_size=600",
]
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env() -> dict[str, str]:
    """This environment without a process group's variables (another test may have set them)."""
    return {k: v for k, v in os.environ.items() if k not in DIST_VARS}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare(run_dir: Path, snapshot: Path, config: str, world_size: int, overrides: list[str]) -> dict:
    argv = [
        sys.executable,
        "-m",
        "training.prepare",
        "--snapshot",
        str(snapshot),
        "--config",
        str(CONFIGS / config),
    ]
    argv += [a for o in overrides for a in ("--set", o)]
    argv += ["--run-dir", str(run_dir), "--world-size", str(world_size)]
    done = subprocess.run(
        argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def train(run_dir: Path, world_size: int, *extra: str) -> subprocess.CompletedProcess:
    """Run training to its end; the launcher for 2 processes, plain python for 1."""
    if world_size == 1:
        argv = [sys.executable, "-m", "training.train"]
    else:
        argv = [str(DEEPSPEED), "--num_gpus", str(world_size), "--master_port", str(_free_port())]
        argv += ["--module", "training.train"]
    argv += ["--run-dir", str(run_dir), *extra]
    done = subprocess.run(
        argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, check=False
    )
    (run_dir / "train.log").write_text(done.stdout + done.stderr)  # for a failing test's reader
    return done


def launched(
    tmp_path_factory, name: str, config: str, world_size: int, overrides: list[str], stop: int | None = None
):
    run_dir = tmp_path_factory.mktemp(name) / "run"
    snapshot = write_snapshot(run_dir.parent / "snapshot")
    prepare(run_dir, snapshot, config, world_size, COMMON + overrides)
    if stop is not None:
        done = train(run_dir, world_size, "--stop-after-step", str(stop))
        assert done.returncode == 0, done.stderr[-3000:]
        assert _status(run_dir)["state"] == "stopped"
        assert _metrics(run_dir)[-1]["step"] == stop
    done = train(run_dir, world_size)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def t5_zero2(tmp_path_factory) -> Path:
    return launched(
        tmp_path_factory, "t5z2", "tiny-t5.yaml", 2, ["zero.stage=2", "batch.gradient_accumulation_steps=2"]
    )


@pytest.fixture(scope="module")
def t5_one_process(tmp_path_factory) -> Path:
    return launched(
        tmp_path_factory, "t5one", "tiny-t5.yaml", 1, ["zero.stage=2", "batch.gradient_accumulation_steps=4"]
    )


LLAMA_ZERO3 = [
    "zero.stage=3",
    "batch.gradient_accumulation_steps=2",
    "model.gradient_checkpointing=true",
    "model.dropout=0.1",  # a resumed run matches only with every rank's RNG restored
    "train.eval_every_steps=20",
]


@pytest.fixture(scope="module")
def llama_zero3(tmp_path_factory) -> Path:
    return launched(tmp_path_factory, "llamaz3", "tiny-llama.yaml", 2, LLAMA_ZERO3)


@pytest.fixture(scope="module")
def llama_zero3_resumed(tmp_path_factory) -> Path:
    return launched(tmp_path_factory, "llamaz3r", "tiny-llama.yaml", 2, LLAMA_ZERO3, stop=SAVE_EVERY)


@pytest.fixture(params=["t5_zero2", "llama_zero3"])
def full_run(request) -> Path:
    return request.getfixturevalue(request.param)


def test_run_succeeds_and_the_loss_goes_down(full_run):
    status = _status(full_run)
    assert status == {
        "state": "succeeded",
        "step": STEPS,
        "total_steps": STEPS,
        "message": "finished",
        "final_dir": str(full_run / "final"),
    }
    metrics = _metrics(full_run)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert metrics[-1]["loss"] < 0.7 * metrics[0]["loss"]
    for m in metrics:
        assert m["mfu"] is None  # no defined peak on CPU
        assert 0 < m["padding_efficiency"] <= 1
        assert m["tokens_per_s_per_gpu"] > 0 and m["peak_memory_bytes"] > 2**20 and m["elapsed_s"] >= 0
        assert m["lr"] > 0 and m["grad_norm"] is not None
    assert metrics[-1]["epoch"] == pytest.approx(STEPS * 8 / 16)  # 8 rows per step, 16 training rows
    assert list((full_run / "tensorboard").glob("events.out.tfevents.*"))


def test_checkpoints_are_complete_and_pruned(full_run):
    checkpoints = full_run / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == f"step-{STEPS}"
    tags = sorted(p.name for p in checkpoints.iterdir() if p.is_dir())
    assert tags == [f"step-{SAVE_EVERY}", f"step-{STEPS}"]  # keep_checkpoints: 2, no .tmp- left
    for tag in tags:
        assert {p.name for p in (checkpoints / tag).glob("rng-rank-*.pt")} == {
            "rng-rank-0.pt",
            "rng-rank-1.pt",
        }
        assert json.loads((checkpoints / tag / "kpdd_state.json").read_text())["step"] == int(tag[5:])


def test_final_model_equals_the_last_checkpoint_and_generates_as_trained(full_run):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from training.data import load_tokenizer, specials_of
    from training.model import greedy

    final = full_run / "final"
    student = json.loads((final / "kpdd_student.json").read_text())
    assert student["layout"] == "end-to-end" and student["tasks"] == ["end-to-end"]
    assert student["modes"] == ["cot", "pot"] and student["max_target_tokens"] == 160
    snapshot_id = json.loads((full_run.parent / "snapshot" / "manifest.json").read_text())["snapshot_id"]
    assert student["snapshot_id"] == snapshot_id

    # The exported weights are the trained ones (ZeRO partitions gathered), not a partition or the init.
    saved = load_file(final / "model.safetensors")
    trained = get_fp32_state_dict_from_zero_checkpoint(str(full_run / "checkpoints"), tag=f"step-{STEPS}")
    common = saved.keys() & trained.keys()
    assert len(common) >= len(saved) - 1  # a tied output embedding may be stored once
    for name in common:
        torch.testing.assert_close(saved[name], trained[name].to(saved[name].dtype), rtol=0, atol=0)

    loader = AutoModelForSeq2SeqLM if student["arch"] == "seq2seq" else AutoModelForCausalLM
    model = loader.from_pretrained(final, local_files_only=True).eval()
    assert model.config.model_type == student["model_type"]
    samples = json.loads((final / "kpdd_samples.json").read_text())
    assert len(samples) == 2 and all(len(s["generated_ids"]) > 5 for s in samples)
    specials = specials_of(load_tokenizer(final))
    for sample in samples:
        ids = greedy(model, sample["prompt_ids"], sample["max_new_tokens"], student["arch"], specials)
        assert ids == sample["generated_ids"]


def test_one_process_with_more_accumulation_takes_the_same_steps(t5_zero2, t5_one_process):
    """2 ranks x accumulation 2 and 1 rank x accumulation 4 see the same rows in each step: the
    losses agree at every step only if the gradient average over ranks is compensated."""
    two, one = _metrics(t5_zero2), _metrics(t5_one_process)
    assert [m["step"] for m in one] == [m["step"] for m in two]
    # Gloo's all-reduce sums in another order than one process does, and Adam amplifies the
    # float32 difference step after step: seen on a loaded machine, 1.4e-5 at step 9 and 2.0e-4
    # at step 15 (4.09183 vs 4.09202). The first steps, before amplification, agree tightly; the
    # later ones within 0.1 % of the loss, far below its change from one step to the next (about
    # 0.1 here).
    for a, b in zip(one, two, strict=True):
        tolerance = 1e-5 if a["step"] <= 3 else 1e-3 * abs(b["loss"])
        assert a["loss"] == pytest.approx(b["loss"], abs=tolerance), a["step"]


def test_resumed_run_continues_exactly(llama_zero3, llama_zero3_resumed):
    uninterrupted, resumed = _metrics(llama_zero3), _metrics(llama_zero3_resumed)
    assert [m["step"] for m in resumed] == list(range(1, STEPS + 1))  # no step logged twice
    for a, b in zip(uninterrupted, resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), a["step"]
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)
    assert resumed[SAVE_EVERY]["step"] == SAVE_EVERY + 1  # the first step after the restart
    assert [m.get("val_loss") for m in resumed] == pytest.approx([m.get("val_loss") for m in uninterrupted])
    assert _status(llama_zero3_resumed)["state"] == "succeeded"


def test_training_continues_from_a_saved_student(tmp_path, t5_zero2):
    """model.path: weights and tokenizer from a local Hugging Face directory (here the final/ of
    the T5 run), so the first loss is the trained model's, not a random model's."""
    run_dir = tmp_path / "run"
    overrides = [*COMMON, f"model.path={t5_zero2 / 'final'}", "train.max_steps=3", "train.samples=0"]
    prepare(run_dir, write_snapshot(tmp_path / "snapshot"), "tiny-t5.yaml", 1, overrides)
    done = train(run_dir, 1)
    assert done.returncode == 0, done.stderr[-3000:]
    # The model's own tokenizer was used (and saved as the run's), not one trained on the snapshot.
    from training.data import load_tokenizer

    used = load_tokenizer(run_dir / "tokenizer").backend_tokenizer.to_str()
    assert used == load_tokenizer(t5_zero2 / "final").backend_tokenizer.to_str()
    assert _metrics(run_dir)[0]["loss"] < _metrics(t5_zero2)[-1]["loss"] + 0.5
    assert _metrics(run_dir)[0]["loss"] < 0.7 * _metrics(t5_zero2)[0]["loss"]


def test_wrong_world_size_fails_with_the_numbers(tmp_path):
    run_dir = tmp_path / "run"
    prepare(
        run_dir,
        write_snapshot(tmp_path / "snapshot"),
        "tiny-t5.yaml",
        2,
        [*COMMON, "batch.gradient_accumulation_steps=2"],
    )
    done = train(run_dir, 1)
    assert done.returncode == 2
    assert "kpdd: error: batch.global_batch_size (8) != batch.micro_batch_size (2) x" in done.stderr
    assert "world size (1)" in done.stderr
    status = _status(run_dir)
    assert status["state"] == "failed" and "world size (1)" in status["message"]
