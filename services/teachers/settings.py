"""Teacher settings, from `KPDD_*` variables (to be folded into `services.config.Settings`).

API keys are not settings: they are read from `OPENAI_API_KEY`, `ANTHROPIC_API_KEY` or the
variable a spec names (`api_key_env=...`) when a client is built, and kept only in that client.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.errors import ConfigError


class TeacherSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KPDD_", extra="ignore", frozen=True)

    sim_url: str | None = Field(
        default=None,
        description="Base URL of a running `kpdd teacher-sim` (http://host:port); unset means "
        "`sim:` teachers start the simulator in-process on a loopback port.",
    )
    prices_file: Path | None = Field(
        default=None,
        description="A JSON price table whose entries override the shipped services/teachers/prices.json.",
    )
    teacher_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="Seconds one teacher HTTP request may take."
    )
    teacher_max_attempts: int = Field(
        default=6, ge=1, le=50, description="Attempts per teacher call, the first included."
    )
    teacher_backoff_s: float = Field(
        default=1.0, ge=0, le=600, description="Backoff before the second attempt; doubles after."
    )
    teacher_backoff_max_s: float = Field(
        default=60.0, ge=0, le=3600, description="Longest backoff between two attempts."
    )
    teacher_retry_after_max_s: float = Field(
        default=300.0,
        ge=0,
        le=3600,
        description="Longest wait a server's Retry-After may impose; a longer one ends the call.",
    )

    @model_validator(mode="after")
    def _check_backoff(self) -> TeacherSettings:
        if self.teacher_backoff_max_s < self.teacher_backoff_s:
            raise ValueError("KPDD_TEACHER_BACKOFF_MAX_S must be at least KPDD_TEACHER_BACKOFF_S")
        return self


def load_teacher_settings() -> TeacherSettings:
    """The teacher settings now in the environment (read on each call: cheap, and tests change
    the environment between calls)."""
    try:
        return TeacherSettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["loc"]:
            raise ConfigError(
                f"invalid environment variable KPDD_{str(first['loc'][0]).upper()}: {first['msg']}"
            ) from None
        raise ConfigError(f"invalid teacher settings: {first['msg']}") from None


__all__ = ["TeacherSettings", "load_teacher_settings"]
