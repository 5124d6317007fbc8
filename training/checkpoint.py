"""Resumable checkpoints and the final Hugging Face export, written atomically.

Layout under the run directory::

    checkpoints/step-N/       DeepSpeed's files (weights, optimizer and scheduler, per-rank ZeRO
                              partitions) + rng-rank-R.pt per rank + kpdd_state.json
    checkpoints/latest        the tag of the newest complete checkpoint (text, e.g. `step-40`)
    final/                    save_pretrained model (safetensors) + tokenizer + kpdd_student.json
                              + kpdd_samples.json (greedy answers of the model at the end)

A checkpoint is written to `checkpoints/.tmp-step-N` by every rank, then, after a barrier, rank 0
renames it to `step-N` and replaces `latest` (write-then-rename), so a crash at any point leaves
`latest` naming a complete checkpoint; leftover `.tmp-*` directories are removed at the next
start. Only the newest `keep_checkpoints` are kept. The renames assume the run directory is one
filesystem seen by every rank (as DeepSpeed's own `latest` does).

Resuming restores weights, optimizer, scheduler, the position in the data (epoch and step within
it: the data order is a function of seed and epoch) and every rank's RNG states (python, numpy,
torch, and CUDA when present), so the next step is the step an uninterrupted run would take.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from training.config import TrainConfigError

STATE_FILE = "kpdd_state.json"
TMP_PREFIX = ".tmp-"


@dataclass(slots=True)
class Position:
    """Where training stands after `step` optimizer steps: `epoch`, and `position` steps done
    within it (the next step is step `position` of epoch `epoch`)."""

    step: int = 0
    epoch: int = 0
    position: int = 0


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` so that readers see the old or the new content, never a part."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def clean_partial(run_dir: Path, everything: bool = False) -> None:
    """Remove what a crash left half-written (rank 0, before training starts); `everything`:
    every checkpoint, for a run that starts again from step 0 (`--resume never`)."""
    root = checkpoints_dir(run_dir)
    if everything and root.is_dir():
        shutil.rmtree(root)
    for path in root.glob(f"{TMP_PREFIX}*") if root.is_dir() else []:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def latest_tag(run_dir: Path) -> str | None:
    """The newest complete checkpoint's tag, or None when there is none."""
    marker = checkpoints_dir(run_dir) / "latest"
    if not marker.is_file():
        return None
    tag = marker.read_text().strip()
    return tag if (checkpoints_dir(run_dir) / tag / STATE_FILE).is_file() else None


def save(engine: Any, run_dir: Path, position: Position, keep: int) -> Path:
    """Save on every rank (collective); returns the complete checkpoint's directory."""
    root = checkpoints_dir(run_dir)
    tag = f"step-{position.step}"
    tmp_tag = f"{TMP_PREFIX}{tag}"
    rank = dist.get_rank()
    engine.save_checkpoint(str(root), tag=tmp_tag, client_state=asdict(position), save_latest=False)
    torch.save(rng_state(), root / tmp_tag / f"rng-rank-{rank}.pt")
    dist.barrier()  # every rank's files are in the temporary directory
    if rank == 0:
        write_atomic(root / tmp_tag / STATE_FILE, json.dumps(asdict(position)) + "\n")
        _swap_in(root / tmp_tag, root / tag)  # `tag` exists when a resumed run saves a step again
        write_atomic(root / "latest", tag + "\n")
        _prune(root, keep)
    dist.barrier()  # nobody goes on (or loads) before `latest` names the new checkpoint
    return root / tag


def _swap_in(source: Path, target: Path) -> None:
    """Rename directory `source` to `target`, replacing (then deleting) an existing `target`."""
    old = target.with_name(f"{TMP_PREFIX}old-{target.name}")
    if target.exists():
        os.replace(target, old)
    os.replace(source, target)
    if old.exists():
        shutil.rmtree(old)


def _prune(root: Path, keep: int) -> None:
    steps = sorted(
        (int(p.name.removeprefix("step-")), p)
        for p in root.glob("step-*")
        if p.is_dir() and p.name.removeprefix("step-").isdigit()
    )
    for _, path in steps[:-keep]:
        shutil.rmtree(path)


def load(engine: Any, run_dir: Path, tag: str) -> Position:
    """Restore the engine and this rank's RNG from checkpoint `tag`; every rank calls it."""
    root = checkpoints_dir(run_dir)
    saved_by = len(list((root / tag).glob("rng-rank-*.pt")))
    if saved_by != dist.get_world_size():
        raise TrainConfigError(
            f"{root / tag} was saved by {saved_by} processes and this run has {dist.get_world_size()};"
            f" resume with {saved_by}, or start again with --resume never"
        )
    path, client = engine.load_checkpoint(str(root), tag=tag)
    if path is None:
        raise RuntimeError(f"{root / tag}: DeepSpeed could not load this checkpoint")
    set_rng_state(torch.load(root / tag / f"rng-rank-{dist.get_rank()}.pt", weights_only=False))
    return Position(int(client["step"]), int(client["epoch"]), int(client["position"]))


def export_final(
    engine: Any, tokenizer: Any, run_dir: Path, student: dict[str, Any], samples: list[dict[str, Any]]
) -> Path:
    """Write `final/` (every rank calls it): the model as `save_pretrained` (safetensors; under
    ZeRO-3 the partitions are gathered first, so each rank briefly holds the whole model),
    the tokenizer, `kpdd_student.json` and `kpdd_samples.json`. Written to `.tmp-final`, then
    renamed."""
    import deepspeed

    run_dir = Path(run_dir)
    tmp, final = run_dir / f"{TMP_PREFIX}final", run_dir / "final"
    rank = dist.get_rank()
    if rank == 0 and tmp.exists():
        shutil.rmtree(tmp)
    model = engine.module
    params = list(model.parameters()) if engine.zero_optimization_stage() == 3 else []
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=bool(params)):
        if rank == 0:
            model.save_pretrained(str(tmp))
    if rank == 0:
        tokenizer.save_pretrained(str(tmp))
        (tmp / "kpdd_student.json").write_text(json.dumps(student, indent=2) + "\n")
        (tmp / "kpdd_samples.json").write_text("[\n" + ",\n".join(map(json.dumps, samples)) + "\n]\n")
        _swap_in(tmp, final)
    dist.barrier()
    return final
