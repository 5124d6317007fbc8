"""The training configuration: dataclasses loaded from YAML, checked where they are declared.

A run is described by one YAML file with the sections below (every field documented where it is
declared; a missing field takes its default), then `--set section.field=value` overrides, then
the batch arithmetic for the launch's world size (`resolve`). The resolved configuration is
written into the run directory (`to_yaml`) and the training processes read only that copy.

Values are typed by their field: a YAML string `3e-4` in a float field is a float, `null` clears
an optional field, `[0.9, 0.95]` fills a pair. An unknown section or field is an error that lists
the valid ones, so a typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ARCHS = {"t5": "seq2seq", "llama": "causal", "qwen2": "causal"}
MODES = ("cot", "pot")
LAYOUTS = ("end-to-end", "two-stage", "cascade")
SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("auto", "bf16", "fp16", "fp32")
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flex_attention")


class TrainConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TrainConfigError(message)


@dataclass(slots=True)
class ModelConfig:
    arch: str = "t5"
    """t5 (encoder-decoder, `seq2seq`), llama or qwen2 (decoder-only, `causal`)."""
    path: str | None = None
    """Local Hugging Face model directory (weights and tokenizer; never downloaded), or null to
    build a model with random weights from the size fields below and a tokenizer trained on the
    snapshot (`data.tokenizer_vocab_size`). A checkpoint keeps its tokenizer's special tokens; a
    causal one gains `<sep>` (see `training.data.tokenizer`)."""
    d_model: int = 64
    """Hidden size of a built model (T5 `d_model`, Llama/Qwen2 `hidden_size`)."""
    layers: int = 2
    """Layers of a built model (T5: encoder and decoder each)."""
    heads: int = 4
    """Attention heads of a built model; must divide `d_model`."""
    kv_heads: int | None = None
    """Key/value heads of a built Llama/Qwen2 model (grouped-query attention); null = `heads`."""
    ff: int = 128
    """Feed-forward width of a built model."""
    max_positions: int = 2048
    """Position limit of a built Llama/Qwen2 model (RoPE); at least the longest training row."""
    dropout: float | None = None
    """Dropout probability; null keeps the checkpoint's own (0 for a built model)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more compute)."""
    attn_implementation: str | None = None
    """eager | sdpa | flash_attention_2 | flex_attention; null = the transformers default."""

    def __post_init__(self) -> None:
        _check(self.arch in ARCHS, f"model.arch: {self.arch!r} is not one of {', '.join(ARCHS)}")
        for name in ("d_model", "layers", "heads", "ff", "max_positions"):
            _check(getattr(self, name) >= 1, f"model.{name}: must be at least 1, not {getattr(self, name)}")
        _check(
            self.d_model % self.heads == 0,
            f"model.d_model ({self.d_model}) must be a multiple of model.heads ({self.heads})",
        )
        kv = self.kv_heads or self.heads
        _check(self.heads % kv == 0, f"model.kv_heads ({kv}) must divide model.heads ({self.heads})")
        _check(
            self.dropout is None or 0.0 <= self.dropout < 1.0,
            f"model.dropout: {self.dropout} is not a probability in [0, 1)",
        )
        _check(
            self.attn_implementation is None or self.attn_implementation in ATTENTION,
            f"model.attn_implementation: {self.attn_implementation!r} is not one of {', '.join(ATTENTION)}"
            " (or null for the default)",
        )

    @property
    def kind(self) -> str:
        """`seq2seq` or `causal`: how inputs and targets are laid out."""
        return ARCHS[self.arch]


@dataclass(slots=True)
class DataConfig:
    snapshot: str | None = None
    """The snapshot directory (`kpdd export --out`); prepare sets it from --snapshot."""
    layout: str | None = None
    """end-to-end | two-stage | cascade; null = the snapshot's own (an error if it holds several)."""
    modes: list[str] | None = None
    """Solution modes to train on (cot, pot); null = every mode in the snapshot."""
    max_source_tokens: int = 256
    """Inputs are cut to this many tokens (the count is reported by prepare/train)."""
    max_target_tokens: int = 256
    """Targets are cut to this many tokens, end-of-sequence included."""
    packing: bool = False
    """Pack several examples into one row of `max_seq_len` tokens (block attention mask)."""
    max_seq_len: int | None = None
    """Row length when packing; null = max_source_tokens + max_target_tokens."""
    tokenizer_vocab_size: int = 2000
    """Vocabulary of the tokenizer trained on the snapshot when `model.path` is null."""

    def __post_init__(self) -> None:
        _check(
            self.layout is None or self.layout in LAYOUTS,
            f"data.layout: {self.layout!r} is not one of {', '.join(LAYOUTS)} (or null for the snapshot's)",
        )
        for mode in self.modes or []:
            _check(mode in MODES, f"data.modes: {mode!r} is not one of {', '.join(MODES)}")
        _check(
            self.modes is None or len(self.modes) > 0, "data.modes: an empty list trains on nothing; use null"
        )
        for name in ("max_source_tokens", "max_target_tokens"):
            _check(getattr(self, name) >= 3, f"data.{name}: must be at least 3, not {getattr(self, name)}")
        _check(
            self.tokenizer_vocab_size > 261,  # 256 byte symbols + up to 5 special tokens
            f"data.tokenizer_vocab_size: must exceed 261, not {self.tokenizer_vocab_size}",
        )
        _check(
            self.max_seq_len is None or self.max_seq_len >= 2,
            f"data.max_seq_len: must be at least 2, not {self.max_seq_len}",
        )

    @property
    def row_tokens(self) -> int:
        """The longest row the model sees (a causal row holds source and target)."""
        return self.max_seq_len or self.max_source_tokens + self.max_target_tokens


@dataclass(slots=True)
class OptimConfig:
    lr: float = 3e-4
    """Peak learning rate of AdamW, reached after the warmup."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup from 0 to `lr`."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    schedule: str = "cosine"
    """Learning rate after warmup: cosine | linear (decay to `min_lr_ratio` x lr) | constant."""
    min_lr_ratio: float = 0.0
    """Final learning rate of the cosine and linear schedules, as a fraction of `lr`."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"optim.lr: must be positive, not {self.lr}")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps: must be 0 or more, not {self.warmup_steps}")
        _check(self.weight_decay >= 0, f"optim.weight_decay: must be 0 or more, not {self.weight_decay}")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"optim.betas: two numbers in [0, 1), not {list(self.betas)}",
        )
        _check(self.grad_clip >= 0, f"optim.grad_clip: must be 0 (off) or more, not {self.grad_clip}")
        _check(self.schedule in SCHEDULES, f"optim.schedule: {self.schedule!r} is not one of {SCHEDULES}")
        _check(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio: must be in [0, 1], not {self.min_lr_ratio}")


@dataclass(slots=True)
class BatchConfig:
    """Batch sizes count rows (examples, or packed rows when packing) per optimizer step:
    global_batch_size = micro_batch_size x gradient_accumulation_steps x world size."""

    micro_batch_size: int = 8
    """Rows per forward/backward on one process."""
    gradient_accumulation_steps: int | None = None
    """Micro-batches per process per optimizer step; null = derived from global_batch_size (or 1)."""
    global_batch_size: int | None = None
    """Rows per optimizer step over all processes; null = derived from the other two."""

    def __post_init__(self) -> None:
        _check(
            self.micro_batch_size >= 1,
            f"batch.micro_batch_size: must be at least 1, not {self.micro_batch_size}",
        )
        for name in ("gradient_accumulation_steps", "global_batch_size"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"batch.{name}: must be at least 1 (or null), not {value}")

    def for_world(self, world_size: int) -> BatchConfig:
        """All three sizes filled in for `world_size` processes, or an error naming the numbers."""
        micro, accumulation, total = (
            self.micro_batch_size,
            self.gradient_accumulation_steps,
            self.global_batch_size,
        )
        _check(world_size >= 1, f"world size must be at least 1, not {world_size}")
        if accumulation is None and total is not None:
            per_step = micro * world_size
            _check(
                total % per_step == 0,
                f"batch.global_batch_size ({total}) is not a multiple of batch.micro_batch_size ({micro})"
                f" x world size ({world_size}) = {per_step}; change one of them",
            )
            accumulation = total // per_step
        accumulation = accumulation or 1
        expected = micro * accumulation * world_size
        _check(
            total is None or total == expected,
            f"batch.global_batch_size ({total}) != batch.micro_batch_size ({micro}) x "
            f"batch.gradient_accumulation_steps ({accumulation}) x world size ({world_size}) = {expected};"
            " set global_batch_size to null or make the product match",
        )
        return BatchConfig(micro, accumulation, expected)


@dataclass(slots=True)
class TrainSection:
    max_steps: int | None = None
    """Optimizer steps to train; when set it overrides `epochs`."""
    epochs: float = 1.0
    """Passes over the training rows (fractions allowed) when `max_steps` is null."""
    seed: int = 1234
    """Seeds the model initialisation, the data order (per epoch) and dropout."""
    save_every_steps: int | None = None
    """Save a resumable checkpoint every N optimizer steps; null = only at the end."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept under checkpoints/ (older ones are deleted after each save)."""
    log_every_steps: int = 10
    """Write a metrics line (and status.json) every N optimizer steps, and at the last step."""
    eval_every_steps: int | None = None
    """Compute the validation loss every N steps (and at the end); null = never."""
    samples: int = 4
    """Validation (else training) inputs answered greedily at the end, into final/kpdd_samples.json."""

    def __post_init__(self) -> None:
        _check(
            self.max_steps is None or self.max_steps >= 1,
            f"train.max_steps: must be at least 1, not {self.max_steps}",
        )
        _check(self.epochs > 0, f"train.epochs: must be positive, not {self.epochs}")
        for name in ("save_every_steps", "eval_every_steps"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"train.{name}: must be at least 1 (or null), not {value}")
        _check(
            self.keep_checkpoints >= 1,
            f"train.keep_checkpoints: must be at least 1, not {self.keep_checkpoints}",
        )
        _check(
            self.log_every_steps >= 1,
            f"train.log_every_steps: must be at least 1, not {self.log_every_steps}",
        )
        _check(self.samples >= 0, f"train.samples: must be 0 or more, not {self.samples}")


@dataclass(slots=True)
class PrecisionConfig:
    dtype: str = "auto"
    """auto (bf16 on a GPU that has it, else fp32) | bf16 | fp16 (not for T5) | fp32."""

    def __post_init__(self) -> None:
        _check(self.dtype in DTYPES, f"precision.dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")


@dataclass(slots=True)
class ZeroConfig:
    stage: int = 2
    """ZeRO stage: 0 (plain data parallel), 1 (optimizer states sharded), 2 (+ gradients), 3 (+ weights)."""
    offload_optimizer: bool = False
    """Keep optimizer states on the CPU (stage 1 to 3; uses DeepSpeed's CPU Adam, compiled on first use)."""
    offload_params: bool = False
    """Keep weights on the CPU between uses (stage 3 only)."""

    def __post_init__(self) -> None:
        _check(self.stage in (0, 1, 2, 3), f"zero.stage: must be 0, 1, 2 or 3, not {self.stage}")
        _check(
            not self.offload_optimizer or self.stage >= 1, "zero.offload_optimizer needs zero.stage 1, 2 or 3"
        )
        _check(not self.offload_params or self.stage == 3, "zero.offload_params needs zero.stage 3")


@dataclass(slots=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    train: TrainSection = field(default_factory=TrainSection)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)

    def __post_init__(self) -> None:
        _check(
            not (self.precision.dtype == "fp16" and self.model.arch == "t5"),
            "precision.dtype: fp16 is refused for T5 (its activations overflow fp16 and the loss turns NaN);"
            " use bf16 on a GPU that has it, or fp32",
        )
        if self.data.packing:
            _check(self.model.kind == "causal", "data.packing: only for decoder-only models (llama, qwen2)")
        if self.model.kind == "causal" and self.model.path is None:
            _check(
                self.data.row_tokens <= self.model.max_positions,
                f"model.max_positions ({self.model.max_positions}) is shorter than a training row"
                f" ({self.data.row_tokens} tokens); raise it or shorten the data limits",
            )

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(dataclasses.asdict(self)), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --- loading and overrides ---------------------------------------------------------------------


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` (from YAML) as the field's type, or an error naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin in (list, tuple):
        _check(isinstance(value, list | tuple), f"{key}: expected a list, got {value!r}")
        if origin is tuple and args[-1] is not Ellipsis:
            _check(len(value) == len(args), f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
        return origin(_coerce(v, args[0], key) for v in value)
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(hint)
    if expected is None:
        raise TrainConfigError(f"{key}: unsupported field type {hint}")
    wrong = TrainConfigError(f"{key}: expected {expected}, got {value!r}")
    if hint is bool or isinstance(value, bool):  # YAML true/false only where a bool is wanted
        if hint is not bool or not isinstance(value, bool):
            raise wrong
        return value
    if hint is str:
        if not isinstance(value, str | int | float):
            raise wrong
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise wrong from None
    if hint is int:
        if not number.is_integer():
            raise wrong
        return int(number)
    return number


def _sections() -> dict[str, type]:
    return {f.name: typing.get_type_hints(TrainConfig)[f.name] for f in dataclasses.fields(TrainConfig)}


def valid_keys() -> list[str]:
    """Every `section.field` a YAML file or `--set` may name."""
    return [f"{name}.{f.name}" for name, cls in _sections().items() for f in dataclasses.fields(cls)]


def _build(raw: dict[str, Any]) -> TrainConfig:
    sections = _sections()
    unknown = [name for name in raw if name not in sections]
    _check(
        not unknown, f"unknown config section(s) {', '.join(map(str, unknown))}; valid: {', '.join(sections)}"
    )
    built = {}
    for name, cls in sections.items():
        values = raw.get(name) or {}
        _check(isinstance(values, dict), f"{name}: expected a mapping of fields, got {values!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = [k for k in values if k not in fields]
        _check(
            not bad,
            f"unknown key(s) {', '.join(f'{name}.{k}' for k in bad)}; valid keys: {', '.join(valid_keys())}",
        )
        built[name] = cls(**{k: _coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()})
    return TrainConfig(**built)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.field=value` strings applied to the raw YAML mapping (values parsed as YAML)."""
    raw = {k: dict(v or {}) for k, v in raw.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        _check(bool(sep), f"--set {item!r}: expected section.field=value")
        _check(key in valid_keys(), f"--set {key}: unknown key; valid keys: {', '.join(valid_keys())}")
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = yaml.safe_load(text) if text.strip() else None
    return raw


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise TrainConfigError(f"{path}: cannot read the config ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise TrainConfigError(f"{path}: not valid YAML ({exc})") from exc
    _check(isinstance(raw, dict), f"{path}: expected a mapping of sections at the top level")
    return raw


def resolve(config_path: Path | str, overrides: list[str] | None = None, world_size: int = 1) -> TrainConfig:
    """The file, then the overrides, checked, with the batch sizes filled in for `world_size`."""
    cfg = _build(apply_overrides(load_yaml(Path(config_path)), overrides or []))
    cfg.batch = cfg.batch.for_world(world_size)
    return cfg
