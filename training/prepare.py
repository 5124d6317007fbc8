"""Check a training run and write its run directory, before any process is launched.

    python -m training.prepare --snapshot DIR --config FILE [--set section.field=value ...]
        --run-dir DIR --world-size N

Resolves the config (file, overrides, batch arithmetic for N processes), reads the snapshot's
tasks for the layout (the config's, else the snapshot's own; several candidates is an error),
checks `model.path` (a local model directory whose tokenizer the data encoding can use), then
writes DIR/config.yaml (the resolved config, with `data.snapshot`, `data.layout` and an
absolute `model.path` filled in) and DIR/ds_config.json, and prints one JSON document on
stdout: {"config", "deepspeed", "world_size", "layout", "train_examples",
"validation_examples", "snapshot_id", "dtype"}.
Bad input prints one line `kpdd: error: ...` on stderr and exits 2; nothing is written then.

`dtype` and the precision switches of ds_config.json are what `precision.dtype: auto` means on
this machine; training decides again on the machine that trains. DeepSpeed is not imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from training.config import TrainConfig, TrainConfigError, resolve
from training.data.snapshot import SnapshotError, read_manifest, read_tasks, snapshot_layouts


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"kpdd: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m training.prepare", description="Check a training run and write its run directory."
    )
    parser.add_argument("--snapshot", required=True, type=Path, help="snapshot directory (kpdd export --out)")
    parser.add_argument("--config", required=True, type=Path, help="training config YAML (training/configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--run-dir", required=True, type=Path, help="directory to write (created)")
    parser.add_argument("--world-size", required=True, type=int, help="number of training processes (GPUs)")
    return parser.parse_args(argv)


# --- the DeepSpeed configuration ---------------------------------------------------------------


def deepspeed_config(cfg: TrainConfig, world_size: int, dtype: str | None = None) -> dict[str, Any]:
    """The DeepSpeed JSON for `cfg` on `world_size` processes training in `dtype` (bf16 | fp16 |
    fp32; None: what `precision.dtype` means on this machine). The optimizer and scheduler are
    not named here: the loop passes torch's AdamW (DeepSpeed's CPU Adam under optimizer offload)
    and a LambdaLR."""
    if dtype is None:
        from training.hardware import resolve_dtype

        dtype = resolve_dtype(cfg.precision.dtype)
    if dtype not in ("bf16", "fp16", "fp32"):
        raise TrainConfigError(f"dtype must be bf16, fp16 or fp32, not {dtype!r}")
    batch = cfg.batch.for_world(world_size)
    zero: dict[str, Any] = {"stage": cfg.zero.stage}
    if cfg.zero.stage >= 1:
        zero.update(contiguous_gradients=True, reduce_bucket_size=int(5e8), allgather_bucket_size=int(5e8))
    if cfg.zero.stage == 3:
        # Without it, save_16bit_model and the final Hugging Face export see empty partitions.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if cfg.zero.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if cfg.zero.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": batch.micro_batch_size,
        "gradient_accumulation_steps": batch.gradient_accumulation_steps,
        "train_batch_size": batch.global_batch_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bf16"},
        "fp16": {"enabled": dtype == "fp16", "loss_scale": 0, "initial_scale_power": 16, "hysteresis": 2},
        "steps_per_print": 10**9,  # the loop logs; DeepSpeed's own progress lines would duplicate it
        "wall_clock_breakdown": False,
    }


def snapshot_layout(snapshot: Path, asked: str | None) -> str:
    """The layout to train: the config's, else the one the snapshot was exported with, else the
    only one whose tables it holds."""
    if asked is not None:
        return asked
    manifest = read_manifest(snapshot)
    exported = (manifest.get("spec") or {}).get("layout")
    if exported:
        return str(exported)
    layouts = snapshot_layouts(snapshot, manifest)
    if len(layouts) != 1:
        raise SnapshotError(
            f"snapshot {snapshot} does not say its layout and holds tables of {len(layouts)} layouts"
            f" ({', '.join(layouts) or 'none'}); choose one with --set data.layout=LAYOUT"
        )
    return layouts[0]


def prepare(
    snapshot: Path, config: Path, overrides: list[str], run_dir: Path, world_size: int
) -> dict[str, Any]:
    """Everything `main` does except printing; raises TrainConfigError or SnapshotError."""
    from training import hardware  # torch, for what `auto` precision means here

    if not snapshot.is_dir():
        raise SnapshotError(f"--snapshot {snapshot}: no such directory")
    cfg: TrainConfig = resolve(config, overrides, world_size)
    cfg.data.snapshot = str(snapshot.resolve())
    if cfg.model.path is not None:
        from training.model import load_pretrained_tokenizer

        cfg.model.path = str(Path(cfg.model.path).resolve())
        load_pretrained_tokenizer(cfg.model)  # the directory and its tokenizer are usable
    cfg.data.layout = snapshot_layout(snapshot, cfg.data.layout)
    try:
        train = read_tasks(snapshot, cfg.data.layout, "train", cfg.data.modes)
        validation = read_tasks(snapshot, cfg.data.layout, "validation", cfg.data.modes)
    except SnapshotError:
        raise
    except ValueError as exc:
        raise SnapshotError(str(exc)) from exc
    if not train:
        modes = ", ".join(cfg.data.modes or ["any"])
        raise SnapshotError(
            f"snapshot {snapshot} has no training rows of layout {cfg.data.layout} and modes {modes}"
        )
    dtype = hardware.resolve_dtype(cfg.precision.dtype)
    ds_config = deepspeed_config(cfg, world_size, dtype)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    (run_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=2) + "\n")
    return {
        "config": dataclasses.asdict(cfg),
        "deepspeed": ds_config,
        "world_size": world_size,
        "layout": cfg.data.layout,
        "train_examples": len(train),
        "validation_examples": len(validation),
        "snapshot_id": read_manifest(snapshot).get("snapshot_id"),
        "dtype": dtype,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        document = prepare(args.snapshot, args.config, args.overrides, args.run_dir, args.world_size)
    except (TrainConfigError, SnapshotError) as exc:
        print(f"kpdd: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
