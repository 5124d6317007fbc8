"""Child processes of a training run: `python -m training.prepare`, the DeepSpeed launcher,
`python -m training.evaluate`, and the supervision of a launch.

The training stack (torch, transformers, deepspeed) lives in `training/` and is only ever run
as a child process, so `services` never imports it and a generation-only install works without
it. A child's contract is its command line, its exit code (0 ok, 2 bad input or config, anything
else a failure) and the files it writes into the run directory:

- `config.yaml`, `ds_config.json`: written by `training.prepare`, which prints one JSON document;
- `metrics.jsonl`: one JSON object per logged step (rank 0);
- `status.json`: `{"state", "step", "total_steps", "message", "final_dir"}`, rewritten atomically;
- `launcher.log`: everything the launcher and its processes print.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.errors import BadInputError, ConfigError, RunFailure

LOG_TAIL_LINES = 12
_ERROR_PREFIX = "kpdd: error: "


def _python() -> str:
    return sys.executable


def _missing_stack(stderr: str) -> bool:
    return "ModuleNotFoundError" in stderr and any(
        f"No module named '{name}" in stderr for name in ("torch", "transformers", "deepspeed", "yaml")
    )


def _child_error(stderr: str) -> str:
    """The one-line error a child printed (`kpdd: error: ...`), or its last lines."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(_ERROR_PREFIX):
            return line.removeprefix(_ERROR_PREFIX)
    return " | ".join(lines[-LOG_TAIL_LINES:]) or "no output"


def run_child(argv: Sequence[str], what: str) -> dict[str, Any]:
    """Run a `training.*` program that prints one JSON document; map its exit code to our errors."""
    proc = subprocess.run([_python(), *argv], capture_output=True, text=True, check=False)
    raise_for_child(proc.returncode, proc.stderr, what)
    try:
        document: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise RunFailure(f"{what} printed no JSON document: {proc.stdout[-500:]!r}") from None
    return document


def raise_for_child(returncode: int, stderr: str, what: str) -> None:
    """Map a `training.*` child's exit to our errors: 2 is bad input (its `kpdd: error:` line),
    a missing training stack is a config error saying what to install, anything else non-zero a
    failure with the child's last lines."""
    if returncode == 0:
        return
    if _missing_stack(stderr):
        raise ConfigError(
            f"{what} needs the training stack: install it with "
            "`pip install torch==2.13.0 && pip install --no-build-isolation -e '.[train]'` "
            "(GPU hosts: see README, Training on GPUs)"
        )
    message = _child_error(stderr)
    if returncode == 2:
        raise BadInputError(message)
    raise RunFailure(f"{what} failed (exit {returncode}): {message}")


def hostfile_slots(text: str, source: str) -> int:
    """Total slots of a DeepSpeed hostfile (`HOST slots=N` lines; `#` comments)."""
    total = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        slots = [p for p in parts[1:] if p.startswith("slots=")]
        if len(parts) != 2 or not slots or not slots[0].removeprefix("slots=").isdigit():
            raise BadInputError(
                f"{source}, line {number}: expected 'HOSTNAME slots=N' (e.g. 'worker-1 slots=8'), got {raw!r}"
            )
        total += int(slots[0].removeprefix("slots="))
    if total < 1:
        raise BadInputError(f"{source}: no 'HOSTNAME slots=N' line; list one line per node")
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launcher_command(
    run_dir: Path, *, num_gpus: int, hostfile: Path | None, resume: str, master_port: int
) -> list[str]:
    """The DeepSpeed launcher's command line: one process per GPU (`--num_gpus`) on this node,
    or the nodes and slots of a hostfile (the launcher reaches them over ssh/pdsh)."""
    argv = [_python(), "-m", "deepspeed.launcher.runner", "--master_port", str(master_port)]
    if hostfile is not None:
        argv += ["--hostfile", str(hostfile)]
    else:
        argv += ["--num_gpus", str(num_gpus)]
    return [*argv, "--module", "training.train", "--run-dir", str(run_dir), "--resume", resume]


@dataclass(slots=True)
class Progress:
    """What the supervisor has read of a run so far."""

    step: int = 0
    total_steps: int | None = None
    last: dict[str, Any] = field(default_factory=dict)
    first_loss: float | None = None
    min_loss: float | None = None
    status: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        keys = ("loss", "lr", "tokens_per_s_per_gpu", "mfu", "padding_efficiency", "peak_memory_bytes")
        return {
            "first_loss": self.first_loss,
            "min_loss": self.min_loss,
            "last": {k: self.last.get(k) for k in keys if k in self.last},
            "mfu_peak_flops": self.last.get("mfu_peak_flops"),
            "device": self.last.get("device"),
        }


class MetricsReader:
    """Reads the lines `metrics.jsonl` gained since the last call (a partial last line waits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self, progress: Progress) -> bool:
        if not self.path.exists():
            return False
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        changed = False
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or "loss" not in record:
                continue
            changed = True
            progress.last = record
            progress.step = int(record.get("step", progress.step))
            loss = record.get("loss")
            if isinstance(loss, int | float):
                progress.first_loss = loss if progress.first_loss is None else progress.first_loss
                progress.min_loss = loss if progress.min_loss is None else min(progress.min_loss, loss)
        return changed


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        status = json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


@dataclass(slots=True)
class Outcome:
    state: str  # succeeded | failed | cancelled
    reason: str | None
    progress: Progress


def supervise(
    argv: Sequence[str],
    run_dir: Path,
    *,
    on_start: Callable[[int], None],
    on_progress: Callable[[Progress], None],
    should_stop: Callable[[], str | None],
    interval_s: float = 2.0,
) -> Outcome:
    """Start the launcher in its own process group, stream its metrics to `on_progress` every
    `interval_s` (also a heartbeat), and return how it ended. `should_stop` returning a reason
    (the run was cancelled) or SIGINT/SIGTERM stop the whole group; it never outlives us."""
    log_path = run_dir / "launcher.log"
    reader = MetricsReader(run_dir / "metrics.jsonl")
    progress = Progress()
    stop_reason: str | None = None
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads are started before exec)
        )
        on_start(proc.pid)
        try:
            while proc.poll() is None:
                time.sleep(interval_s)
                reader.read(progress)
                progress.status = read_status(run_dir) or progress.status
                progress.total_steps = progress.status.get("total_steps", progress.total_steps)
                on_progress(progress)
                stop_reason = should_stop()
                if stop_reason:
                    _stop_group(proc)
        except BaseException:
            _stop_group(proc)
            raise
        finally:
            _kill_leftovers(proc.pid)
    reader.read(progress)
    progress.status = read_status(run_dir) or progress.status
    progress.total_steps = progress.status.get("total_steps", progress.total_steps)
    if stop_reason:
        return Outcome("cancelled", stop_reason, progress)
    code = proc.returncode
    state = progress.status.get("state")
    if code == 0 and state == "succeeded":
        return Outcome("succeeded", None, progress)
    if state == "failed" and progress.status.get("message"):
        reason = f"training failed at step {progress.step}: {progress.status['message']}"
    elif code == 0:
        reason = f"the launcher exited 0 but the run did not report success (status: {state or 'none'})"
    else:
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        reason = f"the DeepSpeed launcher {how} at step {progress.step}"
    tail = log_tail(log_path)
    if tail:
        reason += f"; last lines of {log_path}:\n{tail}"
    return Outcome("failed", reason, progress)


def _die_with_parent() -> None:
    """In the launcher, before exec: SIGTERM when the supervising process dies (Linux), so a
    killed worker never leaves a launcher training on its own. DeepSpeed's launcher passes the
    signal on to its processes."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _kill_leftovers(pgid: int) -> None:
    """After the launcher exited: what is left of its process group (ranks whose launcher was
    killed outright) is killed, so nothing of a finished run goes on holding GPUs or ports."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _stop_group(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM the launcher's process group, then SIGKILL what is left after `grace_s`."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
