"""Alembic owns the schema: the migrations produce exactly the models, on Postgres and SQLite."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from db.migrate import head_revision, upgrade
from db.models import Base


def _diff(url: str) -> list[object]:
    engine = create_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    return list(diff)


def test_autogenerate_finds_no_difference_on_postgres(pg_url: str) -> None:
    assert _diff(pg_url) == []


def test_autogenerate_finds_no_difference_on_sqlite(sqlite_url: str) -> None:
    assert _diff(sqlite_url) == []


def test_upgrade_is_idempotent_and_downgrade_round_trips(pg_url: str) -> None:
    from alembic import command

    from db.migrate import alembic_config

    upgrade(pg_url)  # already at head: a no-op
    command.downgrade(alembic_config(pg_url), "base")
    engine = create_engine(pg_url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade(pg_url)
    assert {"corpora", "problems"} <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
    engine.dispose()
