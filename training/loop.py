"""The training loop over a DeepSpeed engine, with its batch arithmetic written out.

Data order. Every rank plans the same list of micro batches for an epoch
(`make_micro_batches`, a function of seed and epoch); a micro batch's tensors (a packed row's
block mask among them) are built on the device right before its forward pass. With A =
gradient accumulation steps and W = world size, optimizer step i of the epoch takes micro
batches [i*A*W, (i+1)*A*W) and rank r the A of them starting at i*A*W + r*A. An epoch has
floor(micro batches / (A*W)) steps: the last few micro batches that cannot fill a step are
dropped (the same ones on every rank). So a (micro m, accumulation 2, 2 ranks) run and a
(micro m, accumulation 4, 1 rank) run see the same rows in every step.

Loss. The loss of an optimizer step is the sum of the token cross-entropies over every target
token of the step (all micro batches, all ranks) divided by the step's number of target tokens
T, so every target token weighs the same whatever the padding, packing, micro batch size or
world size. The counts are all-reduced before the step's micro batches run. DeepSpeed divides
each micro batch's loss by A (`engine.backward`) and averages gradients over the W ranks, so
each micro batch's backward gets `sum_of_its_token_losses * A * W / T`: the accumulated,
averaged gradient is then exactly d(sum of all token losses / T).

Learning rate: linear warmup over `optim.warmup_steps`, then cosine, linear or constant to
`min_lr_ratio` x lr at the last step (`Schedule`, stepped by DeepSpeed once per optimizer step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from training import checkpoint, hardware
from training.checkpoint import Position
from training.config import OptimConfig, TrainConfig
from training.data.batching import MicroBatch, make_micro_batches
from training.data.encoding import Encoded
from training.data.snapshot import TaskExample
from training.data.tokenizer import Specials
from training.metrics import Reporter, mfu
from training.model import greedy, token_loss_sum


@dataclass
class Schedule:
    """Learning-rate multiplier of optimizer step `s` (a LambdaLR lambda; LambdaLR saves its
    `__dict__` with the scheduler state, hence no slots)."""

    warmup_steps: int
    total_steps: int
    kind: str
    min_ratio: float

    def __call__(self, s: int) -> float:
        if s < self.warmup_steps:
            return (s + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (s - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.kind == "cosine" else 1 - progress
        return self.min_ratio + (1 - self.min_ratio) * shape


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, offload: bool) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases and norm weights); DeepSpeed's
    CPU Adam under optimizer offload (compiled on first use), torch's AdamW otherwise."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


@dataclass(slots=True)
class DataPlan:
    """Which micro batches each optimizer step and each rank gets (see the module docstring)."""

    encoded: Sequence[Encoded]
    kind: str
    micro_batch_size: int
    accumulation: int
    world_size: int
    rank: int
    pad_id: int
    packing: bool
    max_seq_len: int
    seed: int
    batch_options: dict[str, object] = field(default_factory=dict)
    _epoch: int = -1
    _batches: list[MicroBatch] = field(default_factory=list)

    def epoch_batches(self, epoch: int) -> list[MicroBatch]:
        if epoch != self._epoch:
            self._batches = make_micro_batches(
                self.encoded,
                arch=self.kind,
                micro_batch_size=self.micro_batch_size,
                pad_id=self.pad_id,
                packing=self.packing,
                max_seq_len=self.max_seq_len,
                seed=self.seed,
                epoch=epoch,
                **self.batch_options,
            )
            self._epoch = epoch
        return self._batches

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self.epoch_batches(epoch)) // (self.accumulation * self.world_size)

    def rank_batches(self, epoch: int, position: int) -> list[MicroBatch]:
        """This rank's A micro batches of step `position` of `epoch`."""
        first = position * self.accumulation * self.world_size + self.rank * self.accumulation
        return self.epoch_batches(epoch)[first : first + self.accumulation]


@dataclass(slots=True)
class StepTotals:
    """What one or more optimizer steps processed: this rank's summed token losses (a tensor,
    not yet reduced) and the all-rank token counts."""

    loss_sum: torch.Tensor
    target_tokens: int = 0
    real_tokens: int = 0
    slot_tokens: int = 0
    steps: int = 0

    def add(self, other: StepTotals) -> None:
        self.loss_sum += other.loss_sum
        self.target_tokens += other.target_tokens
        self.real_tokens += other.real_tokens
        self.slot_tokens += other.slot_tokens
        self.steps += other.steps


def train_step(engine, batches: list[MicroBatch], kind: str, device: torch.device) -> StepTotals:
    """One optimizer step over this rank's micro batches; every rank calls it together."""
    accumulation = engine.gradient_accumulation_steps()
    world_size = dist.get_world_size()
    if len(batches) != accumulation:
        raise RuntimeError(f"a step needs {accumulation} micro batches per rank, got {len(batches)}")
    counts = torch.tensor(
        [
            sum(mb.target_tokens for mb in batches),
            sum(mb.real_tokens for mb in batches),
            sum(mb.slot_tokens for mb in batches),
        ],
        dtype=torch.int64,
        device=device,
    )
    dist.all_reduce(counts)
    target_tokens, real_tokens, slot_tokens = (int(c) for c in counts.tolist())
    if target_tokens == 0:
        raise RuntimeError("an optimizer step has no target tokens: check data.max_target_tokens")
    # Undo DeepSpeed's division by A and its average over W, and divide by the step's T.
    scale = accumulation * world_size / target_tokens
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    for mb in batches:
        # Built now, on the device: a packed block mask lives for this forward and backward only.
        token_losses = token_loss_sum(engine, mb.build(device), kind)
        engine.backward(token_losses * scale)
        engine.step()  # DeepSpeed applies the update at the A-th micro batch only
        loss_sum += token_losses.detach()
    return StepTotals(loss_sum, target_tokens, real_tokens, slot_tokens, 1)


@torch.no_grad()
def validation_loss(engine, batches: list[MicroBatch], kind: str, device: torch.device) -> float | None:
    """Mean token cross-entropy over `batches`, shared among the ranks. Every rank runs the same
    number of forward passes (ZeRO-3 gathers weights collectively): a rank short of one repeats
    its first micro batch without counting it."""
    if not batches:
        return None
    rank, world_size = dist.get_rank(), dist.get_world_size()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    engine.eval()
    for j in range(math.ceil(len(batches) / world_size)):
        i = j * world_size + rank
        mb = batches[i] if i < len(batches) else batches[0]
        loss = token_loss_sum(engine, mb.build(device), kind)
        if i < len(batches):
            totals += torch.stack(
                [loss.double(), torch.tensor(float(mb.target_tokens), device=device).double()]
            )
    engine.train()
    dist.all_reduce(totals)
    return float(totals[0] / totals[1])


def reduce_window(window: StepTotals) -> float:
    """The window's mean token loss over all ranks (collective)."""
    loss_sum = window.loss_sum.detach().to(torch.float64).reshape(1)
    dist.all_reduce(loss_sum)
    return float(loss_sum) / window.target_tokens


def max_over_ranks(value: int, device: torch.device) -> int:
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor)


# --- the loop ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Session:
    """Everything the loop works with, built by `training.train`."""

    cfg: TrainConfig
    run_dir: Path
    engine: Any
    plan: DataPlan
    val_batches: list[MicroBatch]
    kind: str
    specials: Specials
    device: torch.device
    total_steps: int
    n_params: int
    peak_flops: float | None
    reporter: Reporter


def fit(s: Session, start: Position, stop_after: int | None = None) -> Position:
    """Train from `start` to `s.total_steps` (or to step `stop_after`), logging every
    `log_every_steps` and at the last step, evaluating every `eval_every_steps` and saving every
    `save_every_steps` and at the last step. Every rank calls it."""
    train = s.cfg.train
    pos = Position(start.step, start.epoch, start.position)
    window = StepTotals(torch.zeros((), device=s.device))
    window_started = time.perf_counter()
    while pos.step < s.total_steps and pos.step != stop_after:
        if pos.position >= s.plan.steps_in_epoch(pos.epoch):
            pos.epoch, pos.position = pos.epoch + 1, 0
            continue
        lr = s.engine.get_lr()[0]
        window.add(train_step(s.engine, s.plan.rank_batches(pos.epoch, pos.position), s.kind, s.device))
        pos.step, pos.position = pos.step + 1, pos.position + 1
        last = pos.step in (s.total_steps, stop_after)
        evaluate = train.eval_every_steps is not None and (pos.step % train.eval_every_steps == 0 or last)
        if pos.step % train.log_every_steps == 0 or last or evaluate:
            if s.engine.global_steps != pos.step:
                raise RuntimeError(
                    f"DeepSpeed took {s.engine.global_steps} optimizer steps, the loop {pos.step}"
                )
            seconds = time.perf_counter() - window_started  # training time only
            val_loss = validation_loss(s.engine, s.val_batches, s.kind, s.device) if evaluate else None
            _log(s, pos, window, seconds, lr, val_loss)
            window = StepTotals(torch.zeros((), device=s.device))
            window_started = time.perf_counter()
        else:
            s.reporter.step_done(pos.step)
        if last or (train.save_every_steps and pos.step % train.save_every_steps == 0):
            saving = time.perf_counter()
            checkpoint.save(s.engine, s.run_dir, pos, train.keep_checkpoints)
            window_started += time.perf_counter() - saving  # not counted as training time
    return pos


def _log(
    s: Session, pos: Position, window: StepTotals, seconds: float, lr: float, val_loss: float | None
) -> None:
    world_size = dist.get_world_size()
    loss = reduce_window(window)
    peak_memory = max_over_ranks(hardware.peak_memory_bytes(), s.device)
    tokens_per_s = window.real_tokens / max(seconds, 1e-9) / world_size
    grad_norm = s.engine.get_global_grad_norm()
    record = {
        "step": pos.step,
        "epoch": round(pos.epoch + pos.position / max(1, s.plan.steps_in_epoch(pos.epoch)), 4),
        "loss": loss,
        "lr": lr,
        "grad_norm": float(grad_norm) if grad_norm is not None else None,
        "tokens_per_s_per_gpu": tokens_per_s,
        "mfu": mfu(s.n_params, tokens_per_s, s.peak_flops),
        "padding_efficiency": window.real_tokens / window.slot_tokens if window.slot_tokens else 1.0,
        "peak_memory_bytes": peak_memory,
        "elapsed_s": round(s.reporter.elapsed(), 3),
        # Where the MFU's denominator came from (training/hardware.py: NVIDIA's datasheets).
        "device": hardware.gpu_name() or "cpu",
        "mfu_peak_flops": s.peak_flops,
    }
    if val_loss is not None:
        record["val_loss"] = val_loss
    s.reporter.log(record)
    s.reporter.status("running", pos.step, f"step {pos.step} of {s.total_steps}")


def greedy_samples(s: Session, pairs: list[tuple[TaskExample, Encoded]]) -> list[dict[str, Any]]:
    """Greedy answers of the model as it is at the end of training, for final/kpdd_samples.json
    (a reloaded final/ must give the same ids). Under ZeRO-3 every rank generates in lockstep."""
    zero3 = s.engine.zero_optimization_stage() == 3
    if not zero3 and dist.get_rank() != 0:
        return []
    s.engine.eval()
    max_new = s.cfg.data.max_target_tokens
    samples = [
        {
            "task": example.task,
            "mode": example.mode,
            "input": example.input,
            "prompt_ids": encoded.source_ids,
            "max_new_tokens": max_new,
            "generated_ids": greedy(
                s.engine.module, encoded.source_ids, max_new, s.kind, s.specials, synced=zero3
            ),
        }
        for example, encoded in pairs
    ]
    s.engine.train()
    return samples


def final_student(
    cfg: TrainConfig, kind: str, model_type: str, examples: list[TaskExample], manifest: dict[str, Any]
) -> dict[str, Any]:
    """final/kpdd_student.json: what the evaluation needs to prompt the student as trained."""
    tasks = list(dict.fromkeys(e.task for e in examples))
    return {
        "arch": kind,
        "model_type": model_type,
        "layout": cfg.data.layout,
        "tasks": tasks,
        "modes": sorted({e.mode for e in examples}),
        "max_source_tokens": cfg.data.max_source_tokens,
        "max_target_tokens": cfg.data.max_target_tokens,
        "snapshot_id": manifest.get("snapshot_id"),
    }
