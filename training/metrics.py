"""What a run reports: metrics.jsonl, TensorBoard events, status.json and progress on stderr.

Only rank 0 writes metrics (the loop reduces the numbers over ranks first). `metrics.jsonl` has
one JSON object per logged step:

    step, epoch (fractional), loss (mean cross-entropy over the target tokens of the window: the
    steps since the previous line of this process), lr (of the window's last step), grad_norm
    (null when DeepSpeed does not report it), tokens_per_s_per_gpu (real, non-padding tokens of
    the window / its training time, without validation and checkpoint saving / world size), mfu,
    padding_efficiency (real / computed token positions), peak_memory_bytes (max over ranks:
    torch's peak allocation on GPU, peak RSS on CPU), elapsed_s (since this process started
    training), `device` (the GPU's name, or cpu) and `mfu_peak_flops` (the peak the MFU divides
    by, null on CPU), and `val_loss` on the steps where the validation loss was computed.

MFU is 6 x (all parameters, embeddings included) x tokens/s / (peak x world size), the usual
dense-transformer estimate: it leaves out attention score FLOPs (understating long sequences)
and, for an encoder-decoder, counts every token through both stacks (overstating roughly
twice). The peak is the GPU's dense bf16 peak (`hardware.PEAK_BF16_TFLOPS`); null on CPU.

`status.json` (atomic rewrite) is {"state": running | succeeded | failed | stopped, "step",
"total_steps", "message", "final_dir"}; any rank that fails writes it, since the launcher kills
the others before rank 0 could.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from training.checkpoint import write_atomic

log = logging.getLogger(__name__)


def mfu(n_params: int, tokens_per_s_per_gpu: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation of one GPU (see the module docstring), or None without a peak."""
    if not peak_flops:
        return None
    return 6.0 * n_params * tokens_per_s_per_gpu / peak_flops


def write_status(
    run_dir: Path, state: str, step: int, total_steps: int, message: str = "", final_dir: Path | None = None
) -> None:
    document = {
        "state": state,
        "step": step,
        "total_steps": total_steps,
        "message": message,
        "final_dir": str(final_dir) if final_dir else None,
    }
    write_atomic(Path(run_dir) / "status.json", json.dumps(document) + "\n")


def write_failure(run_dir: Path, message: str) -> None:
    """State `failed` with `message`, keeping the step and total of the last status written."""
    try:
        last = json.loads((Path(run_dir) / "status.json").read_text())
    except (OSError, ValueError):
        last = {}
    write_status(run_dir, "failed", int(last.get("step") or 0), int(last.get("total_steps") or 0), message)


def _reopen_metrics(path: Path, start_step: int):
    """metrics.jsonl for appending, without the lines after `start_step` (those of a run that
    went on past the checkpoint this one resumes from; all of them on a fresh start)."""
    lines = path.read_text().splitlines() if path.is_file() else []
    kept = [line for line in lines if line and json.loads(line)["step"] <= start_step]
    write_atomic(path, "".join(line + "\n" for line in kept))
    return path.open("a")


class Reporter:
    """Rank 0's metrics sinks and progress display; other ranks get one that does nothing."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool) -> None:
        self.run_dir = Path(run_dir)
        self.total_steps = total_steps
        self.start_step = start_step
        self.enabled = enabled
        self.started = time.perf_counter()
        self._jsonl = None
        self._tensorboard = None
        self._bar = None
        if not enabled:
            return
        self._jsonl = _reopen_metrics(self.run_dir / "metrics.jsonl", start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a crashed run wrote after the checkpoint resumed from
            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1)
        except ImportError:
            warnings.warn(
                "tensorboard is not installed: no TensorBoard events (pip install tensorboard)", stacklevel=2
            )
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True
            )

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def status(self, state: str, step: int, message: str = "", final_dir: Path | None = None) -> None:
        if self.enabled:
            write_status(self.run_dir, state, step, self.total_steps, message, final_dir)

    def step_done(self, step: int, loss: float | None = None) -> None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            if loss is not None:
                self._bar.set_postfix(loss=f"{loss:.4f}")

    def log(self, record: dict[str, Any]) -> None:
        """One metrics line; also TensorBoard scalars, and a log line when there is no bar."""
        if not self.enabled:
            return
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self._tensorboard.add_scalar(f"train/{key}", value, record["step"])
            self._tensorboard.flush()
        self.step_done(record["step"], record.get("loss"))
        if self._bar is None:
            print(self._line(record), file=sys.stderr, flush=True)

    def _line(self, record: dict[str, Any]) -> str:
        step = record["step"]
        done = step - self.start_step
        eta = (self.total_steps - step) * self.elapsed() / done if done else 0.0
        parts = [
            f"kpdd train: step {step}/{self.total_steps}",
            f"loss {record['loss']:.4f}",
            f"lr {record['lr']:.2e}",
            f"{record['tokens_per_s_per_gpu']:,.0f} tok/s/gpu",
        ]
        if record.get("val_loss") is not None:
            parts.append(f"val_loss {record['val_loss']:.4f}")
        parts.append(f"eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        return "  ".join(parts)

    def close(self) -> None:
        for sink in (self._jsonl, self._tensorboard, self._bar):
            if sink is not None:
                sink.close()
