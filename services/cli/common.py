"""Helpers shared by CLI commands: the engine in force, schema checks, JSON output."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from services.config import Settings, get_settings
from services.errors import ConfigError, RunFailure

if TYPE_CHECKING:
    from sqlalchemy import Engine


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split(":", 1)[0] + "://..."


def database_engine(settings: Settings | None = None) -> Engine:
    """The engine for the configured database, with its schema at the latest migration.

    The embedded SQLite database is created and migrated on first use; a configured database
    (Postgres) must be migrated explicitly with `kpdd db upgrade`, so a deploy decides when.
    """
    # Imported here: SQLAlchemy and Alembic cost a third of a second, which `--help` need not pay.
    from sqlalchemy.exc import OperationalError

    from db.engine import get_engine
    from db.migrate import current_revision, head_revision, upgrade

    settings = settings or get_settings()
    url = settings.resolved_database_url
    engine = get_engine(url, pool_size=settings.worker_threads + 4)
    try:
        current = current_revision(engine)
    except OperationalError as exc:
        raise RunFailure(
            f"cannot connect to the database {redact_url(url)}: {str(exc.orig).strip().splitlines()[0]}; "
            "check KPDD_DATABASE_URL and that the server is running"
        ) from None
    head = head_revision()
    if current != head:
        if settings.is_embedded:
            upgrade(url)
        else:
            raise ConfigError(
                f"the database {redact_url(url)} is at schema revision {current or 'none'}, "
                f"this kpdd needs {head}: run `kpdd db upgrade`"
            )
    return engine


def print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
