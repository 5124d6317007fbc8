"""Suite-wide fixtures: private PostgreSQL and Redis servers, fresh databases, the CLI.

The servers are started once per test session, on free ports, from the machine's binaries. If
they cannot start, every test that needs them fails with the reason and the package to install;
nothing is skipped.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import create_engine, text

from db.engine import dispose_engines
from db.migrate import upgrade
from services.config import get_settings
from tests.servers import PostgresServer, RedisServer, ServerUnavailable

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("KPDD_DATASETS_DIR", REPO_ROOT.parent / "shared" / "datasets"))
_TEMPLATE_DB = "kpdd_template"
_db_counter = itertools.count()
ServerT = TypeVar("ServerT", PostgresServer, RedisServer)


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not (DATASETS / "gsm8k" / "train.jsonl").exists():
        pytest.fail(f"datasets not found under {DATASETS}; set KPDD_DATASETS_DIR to ../shared/datasets")
    return DATASETS


def _started(server_class: Callable[[], ServerT], name: str) -> ServerT:
    """A started server, or the test fails (never skips) with the reason it could not start."""
    try:
        server = server_class()
        server.start()
    except ServerUnavailable as exc:
        pytest.fail(f"cannot start the suite's {name} server: {exc}", pytrace=False)
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = _started(PostgresServer, "PostgreSQL")
    engine = create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {_TEMPLATE_DB}"))
    engine.dispose()
    upgrade(server.url(_TEMPLATE_DB))
    yield server
    dispose_engines()
    server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = _started(RedisServer, "Redis")
    yield server
    server.close()


def create_postgres_database(server: PostgresServer) -> str:
    """A new database, migrated to head (cloned from the migrated template)."""
    name = f"kpdd_test_{os.getpid()}_{next(_db_counter)}"
    engine = create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE_DB}"))
    engine.dispose()
    return server.url(name)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    url = create_postgres_database(postgres_server)
    yield url
    dispose_engines()
    engine = create_engine(postgres_server.url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)"))
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'kpdd.sqlite3'}"
    upgrade(url)
    yield url
    dispose_engines()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database; tests using it run once on SQLite and once on Postgres."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def kpdd_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    """Set KPDD_* variables for in-process CLI calls and re-read Settings."""

    def apply(**values: str) -> None:
        for key in [k for k in os.environ if k.startswith("KPDD_")]:
            monkeypatch.delenv(key)
        monkeypatch.setenv("KPDD_DATA_DIR", str(tmp_path / "kpdd-data"))
        for key, value in values.items():
            monkeypatch.setenv(f"KPDD_{key.upper()}", value)
        get_settings.cache_clear()

    yield apply  # type: ignore[misc]
    get_settings.cache_clear()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def kpdd(
    db_url: str, kpdd_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> Callable[..., CliResult]:
    """Run `kpdd ARGS...` in-process against the `db_url` database."""
    from services.cli.main import main

    kpdd_env(database_url=db_url)

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
