"""The training config: YAML loading, typed overrides, checks, and the DeepSpeed config."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import TrainConfigError, resolve, valid_keys
from training.loop import Schedule
from training.prepare import deepspeed_config

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
TINY_T5 = CONFIGS / "tiny-t5.yaml"


def test_global_batch_mismatch_names_all_four_numbers():
    overrides = [
        "batch.micro_batch_size=4",
        "batch.gradient_accumulation_steps=3",
        "batch.global_batch_size=64",
    ]
    with pytest.raises(TrainConfigError) as error:
        resolve(TINY_T5, overrides, world_size=2)
    message = str(error.value)
    for part in (
        "global_batch_size (64)",
        "micro_batch_size (4)",
        "gradient_accumulation_steps (3)",
        "world size (2)",
    ):
        assert part in message
    assert "= 24" in message


def test_accumulation_is_derived_from_the_global_batch_when_null():
    cfg = resolve(
        TINY_T5, ["batch.gradient_accumulation_steps=null", "batch.global_batch_size=32"], world_size=2
    )
    assert (
        cfg.batch.micro_batch_size,
        cfg.batch.gradient_accumulation_steps,
        cfg.batch.global_batch_size,
    ) == (4, 4, 32)
    with pytest.raises(TrainConfigError, match=r"global_batch_size \(30\) is not a multiple of .* = 8"):
        resolve(
            TINY_T5, ["batch.gradient_accumulation_steps=null", "batch.global_batch_size=30"], world_size=2
        )


def test_fp16_is_refused_for_t5_but_not_for_llama():
    with pytest.raises(TrainConfigError, match="fp16 is refused for T5"):
        resolve(TINY_T5, ["precision.dtype=fp16"])
    assert resolve(CONFIGS / "tiny-llama.yaml", ["precision.dtype=fp16"]).precision.dtype == "fp16"


def test_unknown_set_key_is_refused_with_the_valid_keys(tmp_path):
    with pytest.raises(TrainConfigError) as error:
        resolve(TINY_T5, ["optim.learning_rate=1e-4"])
    assert "optim.learning_rate: unknown key" in str(error.value)
    assert "optim.lr" in str(error.value) and "zero.stage" in str(error.value)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(
        TrainConfigError, match=r"unknown key\(s\) optim.learning_rate; valid keys: model.arch"
    ):
        resolve(bad_yaml)
    with pytest.raises(TrainConfigError, match=r"expected section\.field=value"):
        resolve(TINY_T5, ["optim.lr"])


def test_overrides_are_typed_by_their_field():
    cfg = resolve(
        TINY_T5,
        [
            "optim.lr=1e-4",
            "optim.betas=[0.9, 0.95]",
            "data.modes=[pot]",
            "train.max_steps=7",
            "model.dropout=null",
        ],
    )
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.data.modes == ["pot"]
    assert cfg.train.max_steps == 7
    with pytest.raises(TrainConfigError, match=r"optim\.lr: expected a number, got 'fast'"):
        resolve(TINY_T5, ["optim.lr=fast"])
    with pytest.raises(TrainConfigError, match=r"train\.max_steps: expected an integer, got 2\.5"):
        resolve(TINY_T5, ["train.max_steps=2.5"])
    with pytest.raises(TrainConfigError, match=r"model\.gradient_checkpointing: expected true or false"):
        resolve(TINY_T5, ["model.gradient_checkpointing=maybe"])


def test_field_checks_name_the_field():
    for override, field in [
        ("model.arch=gpt2", "model.arch"),
        ("model.heads=5", "model.heads"),
        ("data.modes=[tot]", "data.modes"),
        ("optim.schedule=step", "optim.schedule"),
        ("zero.stage=4", "zero.stage"),
        ("zero.offload_params=true", "zero.offload_params"),
        ("data.packing=true", "data.packing"),  # T5: packing is for decoder-only models
    ]:
        with pytest.raises(TrainConfigError, match=field.replace(".", r"\.")):
            resolve(TINY_T5, [override])


def test_to_yaml_round_trips(tmp_path):
    cfg = resolve(TINY_T5, ["optim.betas=[0.8, 0.9]", "data.modes=[cot, pot]"], world_size=2)
    written = tmp_path / "config.yaml"
    written.write_text(cfg.to_yaml())
    assert resolve(written, [], world_size=2) == cfg
    with pytest.raises(TrainConfigError, match="world size"):
        resolve(written, [], world_size=3)  # a resolved batch fixes the world size


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_resolve_for_one_and_eight_gpus(name):
    for world_size in (1, 8):
        cfg = resolve(CONFIGS / name, [], world_size)
        ds = deepspeed_config(cfg, world_size, "bf16" if cfg.precision.dtype == "bf16" else "fp32")
        batch = cfg.batch
        assert (
            ds["train_batch_size"] == batch.micro_batch_size * batch.gradient_accumulation_steps * world_size
        )
        assert ds["zero_optimization"]["stage"] == cfg.zero.stage


def test_deepspeed_config_per_stage_and_precision():
    cfg = resolve(TINY_T5, ["zero.stage=3", "batch.gradient_accumulation_steps=2"], world_size=2)
    ds = deepspeed_config(cfg, 2, "bf16")
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert (
        ds["train_micro_batch_size_per_gpu"],
        ds["gradient_accumulation_steps"],
        ds["train_batch_size"],
    ) == (4, 2, 16)
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert (
        ds["gradient_clipping"] == 1.0
        and ds["wall_clock_breakdown"] is False
        and ds["steps_per_print"] >= 10**6
    )
    zero0 = deepspeed_config(resolve(TINY_T5, ["zero.stage=0"]), 1, "fp32")
    assert zero0["zero_optimization"] == {"stage": 0} and not zero0["bf16"]["enabled"]
    offload = deepspeed_config(resolve(TINY_T5, ["zero.stage=3", "zero.offload_params=true"]), 1, "fp32")
    assert offload["zero_optimization"]["offload_param"]["device"] == "cpu"


def test_valid_keys_cover_every_section():
    sections = {key.split(".")[0] for key in valid_keys()}
    assert sections == {"model", "data", "optim", "batch", "train", "precision", "zero"}


def test_schedule_warms_up_then_decays_to_the_floor():
    cosine = Schedule(warmup_steps=4, total_steps=20, kind="cosine", min_ratio=0.1)
    assert [cosine(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine(4) == pytest.approx(1.0)
    assert cosine(20) == pytest.approx(0.1)
    assert cosine(12) == pytest.approx(0.55)
    linear = Schedule(0, 10, "linear", 0.0)
    assert [linear(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert Schedule(2, 10, "constant", 0.0)(9) == 1.0
