"""One `Settings` object for services and workers, read from `KPDD_*` environment variables.

With nothing set, everything runs on embedded defaults: a SQLite file under `./kpdd-data/`,
in-process task execution and the teacher simulator. Setting `KPDD_DATABASE_URL` to a
`postgresql+psycopg://...` URL switches to Postgres with no other change.

API keys are never part of Settings: they are read from the providers' own variables
(`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`) at the moment a client is built, and never stored.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KPDD_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        default=Path("kpdd-data"),
        description="Folder for the embedded SQLite database, snapshots and run outputs.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; unset means a SQLite file in data_dir. "
        "Example: postgresql+psycopg://user:pass@host:5432/kpdd",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL (redis://host:6379/0); unset runs tasks in-process.",
    )
    datasets_dir: Path = Field(
        default=Path("../shared/datasets"),
        description="Folder holding the original GSM8K, SVAMP, ASDiv and MultiArith files.",
    )
    ingest_batch_size: int = Field(
        default=5000, ge=100, le=1_000_000, description="Rows written per batch during ingestion."
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")
    worker_threads: int = Field(
        default=16, ge=1, le=512, description="Teacher calls in flight per worker process."
    )
    visibility_timeout_s: int = Field(
        default=600,
        ge=5,
        description="Seconds before Redis redelivers a chunk whose worker died without acking it; "
        "keep it above the longest chunk's run time.",
    )
    sandbox_workers: int = Field(
        default=4, ge=1, le=64, description="Programs run at once by a worker's sandbox."
    )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError(
                "must start with 'sqlite:///' or 'postgresql+psycopg://' "
                f"(got a URL with scheme {value.split(':', 1)[0]!r})"
            )
        if value.startswith("postgresql://") or value.startswith("postgresql+psycopg2"):
            raise ValueError("use the psycopg 3 driver: write 'postgresql+psycopg://...'")
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force: the configured one, or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'kpdd.sqlite3').resolve()}"

    @property
    def is_embedded(self) -> bool:
        return self.database_url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide Settings, read once. Tests call `get_settings.cache_clear()` to re-read."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        raise ConfigError(f"invalid environment variable KPDD_{field.upper()}: {first['msg']}") from None
