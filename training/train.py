"""Train a student: `python -m training.train --run-dir DIR [--resume auto|never]`.

Started by DeepSpeed's launcher, one process per GPU (`deepspeed [--num_gpus N | --hostfile F]
--master_port P --module training.train --run-dir DIR`), or as a single process with plain
`python -m training.train` (a world of one). The run directory must have been written by
`python -m training.prepare` (config.yaml and ds_config.json) for the same world size.

What it does, on every rank: read the resolved config; read the snapshot's tasks; get the
tokenizer (rank 0 trains it on the training inputs and targets, or loads `model.path`'s and
adapts it (`training.data.adapt_pretrained`: a causal one gains `<sep>`), and saves it to
DIR/tokenizer while the others wait; every rank then reads DIR/tokenizer, which final/ gets
too); read its special ids once (`specials_of`); build the model (seeded, so every rank starts
equal; a pretrained embedding grows only if the tokenizer outgrew it); encode; plan the micro
batches (`loop.DataPlan`; tensors are built as each is consumed); `deepspeed.initialize` with
AdamW and the schedule; resume from DIR/checkpoints/latest unless `--resume never`; train
(`loop`); answer a few inputs greedily; write DIR/final (`checkpoint.export_final`).

Precision: `auto` is bf16 on a GPU that has it and fp32 on CPU, decided here (the machine that
trains), which overrides the bf16/fp16 switches of ds_config.json. `--stop-after-step K` ends the
run after step K with a checkpoint and state `stopped`, as a pre-empted run would (for resume
drills and tests); `--resume auto` continues it.

Exit status: 0 when the run succeeded or stopped as asked, 2 for a bad run directory or config,
1 when training failed (status.json says why).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from training import checkpoint, hardware
from training.config import TrainConfig, TrainConfigError, resolve
from training.data.batching import MicroBatch, make_micro_batches, packing_attention
from training.data.encoding import Encoded, encode
from training.data.snapshot import SnapshotError, TaskExample, read_manifest, read_tasks
from training.data.tokenizer import Specials, build_tokenizer, load_tokenizer, save_tokenizer, specials_of
from training.loop import DataPlan, Schedule, Session, final_student, fit, greedy_samples, make_optimizer
from training.metrics import Reporter, write_failure
from training.model import attention_implementation, build_model, count_parameters, load_pretrained_tokenizer
from training.prepare import snapshot_layout

log = logging.getLogger("kpdd.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="directory written by training.prepare")
    parser.add_argument(
        "--resume", choices=("auto", "never"), default="auto", help="continue from the last checkpoint"
    )
    parser.add_argument(
        "--stop-after-step", type=int, default=None, help="stop after this step, as if pre-empted"
    )
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )  # launcher
    return parser.parse_args(argv)


def init_distributed() -> torch.device:
    """Join the launcher's process group, or make a world of one under plain python."""
    import deepspeed

    if "RANK" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    device = hardware.device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(dist_backend="gloo" if device.type == "cpu" else None, verbose=False)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def read_run_config(run_dir: Path, world_size: int) -> tuple[TrainConfig, dict, str]:
    """config.yaml (checked for this world size), ds_config.json, and the dtype for this machine."""
    for name in ("config.yaml", "ds_config.json"):
        if not (run_dir / name).is_file():
            raise TrainConfigError(
                f"{run_dir / name} not found: run `python -m training.prepare --run-dir {run_dir}` first"
            )
    cfg = resolve(run_dir / "config.yaml", [], world_size)
    ds_config = json.loads((run_dir / "ds_config.json").read_text())
    expected = (
        cfg.batch.micro_batch_size,
        cfg.batch.gradient_accumulation_steps,
        cfg.batch.global_batch_size,
    )
    found = tuple(
        ds_config.get(k)
        for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")
    )
    if found != expected:
        raise TrainConfigError(
            f"{run_dir}/ds_config.json batch sizes {found} differ from config.yaml's {expected} for"
            f" {world_size} processes; run training.prepare again with --world-size {world_size}"
        )
    dtype = hardware.resolve_dtype(cfg.precision.dtype)
    ds_config["bf16"] = {**ds_config.get("bf16", {}), "enabled": dtype == "bf16"}
    ds_config["fp16"] = {**ds_config.get("fp16", {}), "enabled": dtype == "fp16"}
    return cfg, ds_config, dtype


def get_tokenizer(cfg: TrainConfig, run_dir: Path, texts: list[str]):
    """The run's tokenizer, DIR/tokenizer: written once by rank 0 (model.path's, adapted, or one
    trained on `texts`), then read by every rank."""
    target = run_dir / "tokenizer"
    if dist.get_rank() == 0 and not (target / "tokenizer.json").is_file():
        if cfg.model.path is not None:
            tokenizer = load_pretrained_tokenizer(cfg.model)
        else:
            tokenizer = build_tokenizer(texts, vocab_size=cfg.data.tokenizer_vocab_size, arch=cfg.model.kind)
        tmp = run_dir / ".tmp-tokenizer"
        save_tokenizer(tokenizer, tmp)
        os.replace(tmp, target)
    dist.barrier()
    return load_tokenizer(target)


@dataclass(slots=True)
class Data:
    """The run's examples, tokenizer (and its special ids) and encodings (train, validation)."""

    train: list[TaskExample]
    validation: list[TaskExample]
    tokenizer: Any
    specials: Specials
    train_encoded: list[Encoded]
    validation_encoded: list[Encoded]


def load_data(cfg: TrainConfig, run_dir: Path) -> Data:
    if cfg.data.snapshot is None:
        raise TrainConfigError(f"{run_dir}/config.yaml has no data.snapshot; write it with training.prepare")
    snapshot = Path(cfg.data.snapshot)
    cfg.data.layout = snapshot_layout(snapshot, cfg.data.layout)
    train = read_tasks(snapshot, cfg.data.layout, "train", cfg.data.modes)
    validation = read_tasks(snapshot, cfg.data.layout, "validation", cfg.data.modes)
    tokenizer = get_tokenizer(cfg, run_dir, [t for e in train for t in (e.input, e.target)])
    limits = {
        "max_source_tokens": cfg.data.max_source_tokens,
        "max_target_tokens": cfg.data.max_target_tokens,
    }
    train_encoded, stats = encode(train, tokenizer, arch=cfg.model.kind, **limits)
    validation_encoded, _ = encode(validation, tokenizer, arch=cfg.model.kind, **limits)
    if dist.get_rank() == 0:
        log.info("encoded %s", stats)
    return Data(train, validation, tokenizer, specials_of(tokenizer), train_encoded, validation_encoded)


def plan_batches(
    cfg: TrainConfig, data: Data, options: dict[str, Any]
) -> tuple[DataPlan, list[MicroBatch], int]:
    """The training plan, the validation micro batches and the number of optimizer steps."""
    batch, kind = cfg.batch, cfg.model.kind
    accumulation, world_size = batch.gradient_accumulation_steps or 1, dist.get_world_size()
    plan = DataPlan(
        data.train_encoded, kind, batch.micro_batch_size, accumulation, world_size, dist.get_rank(),
        data.specials.pad_id, cfg.data.packing, cfg.data.row_tokens, cfg.train.seed, options,
    )  # fmt: skip
    per_epoch = plan.steps_in_epoch(0)
    if per_epoch == 0:
        raise TrainConfigError(
            f"{len(data.train_encoded)} training rows make {len(plan.epoch_batches(0))} micro batches,"
            f" fewer than one step needs ({accumulation} x {world_size} processes);"
            " lower batch.micro_batch_size or batch.gradient_accumulation_steps"
        )
    validation = make_micro_batches(
        data.validation_encoded, arch=kind, micro_batch_size=batch.micro_batch_size,
        pad_id=data.specials.pad_id, packing=cfg.data.packing, max_seq_len=cfg.data.row_tokens,
        seed=cfg.train.seed, epoch=0, **options,
    )  # fmt: skip
    return plan, validation, cfg.train.max_steps or math.ceil(cfg.train.epochs * per_epoch)


def run(args: argparse.Namespace, device: torch.device) -> int:
    import deepspeed

    run_dir = args.run_dir.resolve()
    rank = dist.get_rank()
    cfg, ds_config, dtype = read_run_config(run_dir, dist.get_world_size())
    data = load_data(cfg, run_dir)
    seed_everything(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(cfg.model, len(data.tokenizer), data.specials)
    n_params = count_parameters(model)
    seed_everything(cfg.train.seed + rank)  # dropout differs between ranks
    options = {}
    if cfg.data.packing:
        options = packing_attention(attention_implementation(model), hardware.torch_dtype(dtype)).kwargs()
    plan, val_batches, total_steps = plan_batches(cfg, data, options)

    optimizer = make_optimizer(model, cfg.optim, cfg.zero.offload_optimizer)
    schedule = Schedule(cfg.optim.warmup_steps, total_steps, cfg.optim.schedule, cfg.optim.min_lr_ratio)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        config=ds_config,
        dist_init_required=False,
    )
    if rank == 0:
        checkpoint.clean_partial(run_dir, everything=args.resume == "never")
    dist.barrier()
    tag = checkpoint.latest_tag(run_dir) if args.resume == "auto" else None
    start = checkpoint.load(engine, run_dir, tag) if tag else checkpoint.Position()
    reporter = Reporter(run_dir, total_steps, start.step, enabled=rank == 0)
    reporter.status("running", start.step, f"resumed from {tag}" if tag else "started")
    peak = hardware.peak_bf16_flops(hardware.gpu_name())
    session = Session(
        cfg, run_dir, engine, plan, val_batches, cfg.model.kind, data.specials, device, total_steps,
        n_params, peak, reporter,
    )  # fmt: skip
    end = fit(session, start, args.stop_after_step)
    if end.step < total_steps:
        reporter.status("stopped", end.step, f"stopped after step {end.step}; continue with --resume auto")
        reporter.close()
        dist.barrier()  # no rank tears gloo down while another still talks to it
        return 0
    pairs = list(zip(data.validation, data.validation_encoded, strict=True))
    pairs = pairs or list(zip(data.train, data.train_encoded, strict=True))
    samples = greedy_samples(session, pairs[: cfg.train.samples])
    engine.module.config.use_cache = True  # the exported model generates with a cache
    manifest = read_manifest(Path(cfg.data.snapshot or ""))
    student = final_student(cfg, cfg.model.kind, engine.module.config.model_type, data.train, manifest)
    final = checkpoint.export_final(engine, data.tokenizer, run_dir, student, samples)
    reporter.status("succeeded", end.step, "finished", final)
    reporter.close()
    dist.barrier()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    device = init_distributed()
    try:
        return run(args, device)
    except BaseException as exc:
        if args.run_dir.is_dir():
            write_failure(args.run_dir, f"rank {dist.get_rank()}: {type(exc).__name__}: {exc}")
        if isinstance(exc, TrainConfigError | SnapshotError):
            print(f"kpdd: error: {exc}", file=sys.stderr)
            return 2
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
