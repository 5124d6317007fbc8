"""The student under evaluation: its `kpdd_student.json`, the layout and mode to run, loading.

A student directory is what `save_pretrained` wrote (model and tokenizer) plus
`kpdd_student.json`, written by training:

    {"arch": "seq2seq" | "causal", "model_type": "t5", "layout": "two-stage",
     "tasks": ["key-points", "solution"], "modes": ["cot"], "max_source_tokens": 512,
     "max_target_tokens": 384, "snapshot_id": "..."}

Fields beyond these are ignored (newer writers may add some). The layout defaults to the
student's; the mode to the only one it was trained on, and must be chosen when it learnt both.
A layout whose tasks the student never learnt, or a mode it never saw, is an input error: its
inputs would be unlike anything in training. Only this module and `generation` import torch or
transformers, and only when a model is loaded, so input errors are reported fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.kpdd.formatting import LAYOUT_TASKS, STUDENT_TASKS
from training.evaluate.errors import EvalInputError

STUDENT_FILE = "kpdd_student.json"
ARCHS = ("seq2seq", "causal")
MODES = ("cot", "pot")


@dataclass(slots=True, frozen=True)
class StudentInfo:
    """What training recorded about a student (see the module docstring)."""

    arch: str
    model_type: str
    layout: str
    tasks: tuple[str, ...]
    modes: tuple[str, ...]
    max_source_tokens: int
    max_target_tokens: int
    snapshot_id: str | None = None


def read_student_info(model_dir: Path) -> StudentInfo:
    """The directory's `kpdd_student.json`, checked; `EvalInputError` names the file and the fix."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EvalInputError(
            f"--model {model_dir}: no such directory; give the folder a training run saved "
            "(model, tokenizer and kpdd_student.json)"
        )
    path = model_dir / STUDENT_FILE
    if not path.is_file():
        raise EvalInputError(
            f"{path}: not found; --model must be a student saved by `kpdd train` (its final or "
            f"checkpoint model folder), which writes {STUDENT_FILE} next to the weights"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvalInputError(f"{path}: cannot read it as JSON ({exc}); re-save the student") from None
    if not isinstance(data, dict):
        raise EvalInputError(f"{path}: expected a JSON object")
    return _info_from(data, path)


def _info_from(data: dict[str, Any], path: Path) -> StudentInfo:
    def text(name: str, allowed: tuple[str, ...] | None = None) -> str:
        value = data.get(name)
        if not isinstance(value, str) or not value:
            raise EvalInputError(f"{path}: field {name!r} is missing or not text")
        if allowed is not None and value not in allowed:
            raise EvalInputError(f"{path}: {name} {value!r} is not one of {', '.join(allowed)}")
        return value

    def names(name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        value = data.get(name)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise EvalInputError(f"{path}: field {name!r} must be a non-empty list of names")
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise EvalInputError(f"{path}: {name} {unknown} not among {', '.join(allowed)}")
        return tuple(value)

    def positive(name: str) -> int:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EvalInputError(f"{path}: field {name!r} must be a positive integer, got {value!r}")
        return value

    snapshot_id = data.get("snapshot_id")
    return StudentInfo(
        arch=text("arch", ARCHS),
        model_type=text("model_type"),
        layout=text("layout", tuple(LAYOUT_TASKS)),
        tasks=names("tasks", STUDENT_TASKS),
        modes=names("modes", MODES),
        max_source_tokens=positive("max_source_tokens"),
        max_target_tokens=positive("max_target_tokens"),
        snapshot_id=snapshot_id if isinstance(snapshot_id, str) else None,
    )


def resolve_layout_mode(info: StudentInfo, layout: str | None, mode: str | None) -> tuple[str, str]:
    """The layout and mode to evaluate: the flags, else the student's (see module docstring)."""
    layout = layout or info.layout
    if layout not in LAYOUT_TASKS:
        raise EvalInputError(f"--layout {layout!r} is unknown; use one of {', '.join(LAYOUT_TASKS)}")
    missing = [task for task in LAYOUT_TASKS[layout] if task not in info.tasks]
    if missing:
        raise EvalInputError(
            f"--layout {layout} needs task(s) {', '.join(missing)}, which this student was not trained "
            f"on (it knows {', '.join(info.tasks)}); use --layout {info.layout}"
        )
    if mode is None:
        if len(info.modes) != 1:
            raise EvalInputError(
                f"this student was trained on modes {', '.join(info.modes)}; choose one with --mode"
            )
        mode = info.modes[0]
    if mode not in MODES:
        raise EvalInputError(f"--mode {mode!r} is unknown; use cot or pot")
    if mode not in info.modes:
        raise EvalInputError(
            f"--mode {mode}: this student was trained on {', '.join(info.modes)} only; "
            f"use --mode {info.modes[0]}"
        )
    return layout, mode


def pick_device(device: str | None) -> str:
    """`cuda` when asked or available, else `cpu`; asking for CUDA without one is an input error."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise EvalInputError(f"--device {device!r} is unknown; use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvalInputError("--device cuda: no CUDA device is visible here; use --device cpu")
    return device


def load_student(model_dir: Path, info: StudentInfo, device: str) -> tuple[Any, Any]:
    """The model (eval mode, on `device`) and its tokenizer, from local files only.

    The tokenizer is read with training's own reader (`training.data.load_tokenizer`): the one
    training saved (trained on the spot, or a pretrained one with the `<sep>` training added),
    so the special tokens and the input template are the ones training used. Half-precision weights
    are widened to float32 on CPU, where half matmuls are slow or missing; on CUDA the saved
    dtype is kept.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from training.data.tokenizer import SEP, load_tokenizer, specials_of, tokenizer_arch

    try:
        tokenizer = load_tokenizer(Path(model_dir))
        specials_of(tokenizer)  # it has an eos
    except (OSError, ValueError) as exc:
        raise EvalInputError(f"--model {model_dir}: {exc}") from None
    if info.arch == "causal" and tokenizer_arch(tokenizer) != "causal":
        raise EvalInputError(
            f"--model {model_dir}: its tokenizer has no {SEP} token, which ends every causal prompt"
            " in training; the folder must hold the tokenizer training saved with the weights"
        )
    tokenizer.padding_side = "left" if info.arch == "causal" else "right"
    model_class = AutoModelForSeq2SeqLM if info.arch == "seq2seq" else AutoModelForCausalLM
    try:
        model = model_class.from_pretrained(str(model_dir), local_files_only=True, dtype="auto")
    except (OSError, ValueError) as exc:
        raise EvalInputError(
            f"--model {model_dir}: cannot load a {info.arch} model from it ({exc}); "
            "check that the folder holds the saved weights and config.json"
        ) from None
    if device == "cpu" and model.dtype in (torch.float16, torch.bfloat16):
        model = model.float()
    model.to(device)
    model.eval()
    return model, tokenizer
