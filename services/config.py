"""One `Settings` object for services and workers, read from `KPDD_*` environment variables.

With nothing set, everything runs on embedded defaults: a SQLite file under `./kpdd-data/`,
in-process task execution and the teacher simulator. Setting `KPDD_DATABASE_URL` to a
`postgresql+psycopg://...` URL switches to Postgres with no other change.

API keys are never part of Settings: they are read from the providers' own variables
(`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, or the variable a teacher spec names with
`api_key_env=...`) at the moment a client is built, kept only in that client, and never stored.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
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
    chunk_max_deliveries: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Times a problem's chunk may be started (redeliveries and retries included) "
        "before the problem is marked failed with kind attempt_cap.",
    )
    chunk_retry_window_s: float = Field(
        default=900.0,
        ge=1,
        le=86_400,
        description="How long a chunk keeps retrying through a database or broker outage before it "
        "gives up (logged; its problems stay pending for `kpdd resume` and the reconciler).",
    )
    reconcile_interval_s: float = Field(
        default=30.0,
        ge=0.5,
        le=3600,
        description="Seconds between two sweeps of the reconciler (run by `kpdd worker`), which "
        "re-queues chunks with pending problems that no worker holds and the broker no longer has.",
    )
    batch_poll_interval_s: float = Field(
        default=60.0,
        ge=0.2,
        le=3600,
        description="Seconds between two cycles of the batch poller (run by `kpdd worker`): it sends "
        "queued batch requests, polls provider batches, ingests their results and queues the chunks "
        "that waited for them.",
    )
    batch_settle_s: float = Field(
        default=30.0,
        ge=0,
        le=86_400,
        description="A job's queued batch requests are sent once none was added for this long (or a "
        "batch is full), so that one batch carries many chunks.",
    )
    batch_max_requests: int = Field(
        default=50_000,
        ge=1,
        le=100_000,
        description="Most requests in one provider batch (the provider's own limits on requests and "
        "bytes apply too: OpenAI 50,000 and 200 MB, Anthropic 100,000 and 256 MB).",
    )
    batch_max_submissions: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Times a request is sent in a batch before it fails (an expired, cancelled or "
        "server-errored request is sent again in the next batch).",
    )
    sandbox_workers: int = Field(
        default=4, ge=1, le=64, description="Programs run at once by a worker's sandbox."
    )
    sandbox_mode: Literal["auto", "strict", "permissive"] = Field(
        default="auto",
        description="auto: `kpdd worker` refuses to start unless its PoT sandbox isolates programs "
        "fully, other commands use the best isolation available; strict: every sandbox refuses "
        "partial isolation; permissive: none does (development only, a warning at every start). "
        "See docs/sandbox.md.",
    )
    sim_url: str | None = Field(
        default=None,
        description="Base URL of a running `kpdd teacher-sim` (http://host:port); unset means "
        "`sim:` teachers start the simulator in-process on a loopback port.",
    )
    prices_file: Path | None = Field(
        default=None,
        description="A JSON price table whose entries override the shipped services/teachers/prices.json.",
    )
    api_token: str | None = Field(
        default=None,
        repr=False,
        description="Bearer token `kpdd serve` requires on mutating endpoints (and reads, unless "
        "KPDD_API_OPEN_READS); unset: the API refuses every mutating request.",
    )
    api_open_reads: bool = Field(
        default=False, description="Let `kpdd serve` answer GET requests and the dashboard without a token."
    )
    api_ingest_root: Path | None = Field(
        default=None,
        description="Folder under which the API may ingest server-side corpus files (unset: uploads only).",
    )
    api_max_upload_mb: int = Field(
        default=256, ge=1, le=100_000, description="Largest corpus upload the API accepts, in MiB."
    )
    run_heartbeat_timeout_s: float = Field(
        default=120.0,
        ge=5,
        description="Seconds without a heartbeat after which a preparing or running training run is "
        "marked failed (its supervising process was killed or its host went away).",
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
    rate_limit_wait_max_s: float = Field(
        default=600.0,
        ge=1,
        le=86_400,
        description="Longest a teacher call waits for the shared rate limiter (KPDD rpm/tpm options); "
        "past it the call fails with kind rate_limit_wait.",
    )
    claim_ttl_s: float = Field(
        default=30.0,
        ge=2,
        le=3600,
        description="Seconds a worker's claim on a teacher request, or its budget hold, lasts without "
        "renewal (renewed every third of it while the call runs); a worker that died loses both "
        "this long after its last renewal.",
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

    @model_validator(mode="after")
    def _check_backoff(self) -> Settings:
        if self.teacher_backoff_max_s < self.teacher_backoff_s:
            raise ValueError("KPDD_TEACHER_BACKOFF_MAX_S must be at least KPDD_TEACHER_BACKOFF_S")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force: the configured one, or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'kpdd.sqlite3').resolve()}"

    def sandbox_strict(self, *, worker: bool) -> bool:
        """Whether a sandbox must refuse partial isolation (`sandbox_mode`; `worker`: a process
        serving a broker)."""
        return self.sandbox_mode == "strict" or (self.sandbox_mode == "auto" and worker)

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
        if not first["loc"]:  # a check across fields: its message names the variables
            raise ConfigError(f"invalid settings: {first['msg']}") from None
        raise ConfigError(
            f"invalid environment variable KPDD_{str(first['loc'][0]).upper()}: {first['msg']}"
        ) from None
