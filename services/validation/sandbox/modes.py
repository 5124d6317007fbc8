"""Sandbox modes (`KPDD_SANDBOX_MODE`): whether a sandbox without full isolation may run programs.

- `auto` (the default): **strict in a worker** serving a broker (`kpdd worker`: it holds provider
  keys and runs programs by the million), best available isolation everywhere else (the embedded
  demo, `kpdd validate`, `kpdd probe`, evaluation), with a warning when a layer is missing.
- `strict`: every sandbox refuses to start unless every layer holds (`IsolationReport.full`).
- `permissive`: no sandbox refuses, workers included; every start logs a warning naming what is
  missing. For development machines without the privileges strict mode needs, never where real
  provider keys are set.

Strict refusal is `IsolationUnavailable` (a `ConfigError`: exit code 2), one line naming each
missing layer, why, and what would fix it.
"""

from __future__ import annotations

from typing import Literal

SandboxMode = Literal["auto", "strict", "permissive"]
SANDBOX_MODES: tuple[SandboxMode, ...] = ("auto", "strict", "permissive")
PERMISSIVE_HINT = (
    "or set KPDD_SANDBOX_MODE=permissive for development (never where real provider keys are set)"
)


def strict_for(mode: str, *, worker: bool) -> bool:
    """Whether a sandbox must refuse partial isolation: in `strict` mode always, in `auto` mode
    in a broker worker only, in `permissive` mode never."""
    if mode not in SANDBOX_MODES:
        raise ValueError(f"unknown sandbox mode {mode!r}: use one of {', '.join(SANDBOX_MODES)}")
    return mode == "strict" or (mode == "auto" and worker)


def configured_mode() -> str:
    """`KPDD_SANDBOX_MODE`, as validated by the settings."""
    from services.config import get_settings  # lazily: the fork-server never needs settings

    return get_settings().sandbox_mode


def check_worker_sandbox(mode: str) -> str | None:
    """What `kpdd worker` runs before it starts Celery: start a sandbox as a worker process will
    (strict unless `mode` is `permissive`) and stop it. Raises `IsolationUnavailable` (exit code 2)
    when strict mode refuses; returns a warning line when `permissive` lets it start anyway."""
    from services.validation.sandbox.sandbox import Sandbox

    strict = strict_for(mode, worker=True)
    with Sandbox(parallelism=1, scientific=False, strict=strict) as sandbox:
        report = sandbox.isolation
    if strict:
        return None
    missing = report.missing()
    if not missing:
        return (
            "KPDD_SANDBOX_MODE=permissive: this worker would run PoT programs without full "
            "isolation (it has it here)"
        )
    return (
        "KPDD_SANDBOX_MODE=permissive: this worker runs PoT programs WITHOUT full isolation: "
        + "; ".join(missing)
        + ". For development only: never with real provider keys in its environment"
    )
