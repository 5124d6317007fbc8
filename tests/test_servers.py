"""The suite's private servers start, answer, and survive a kill and restart."""

from __future__ import annotations

import redis
from sqlalchemy import create_engine, text

from tests.servers import PostgresServer, RedisServer


def test_postgres_server_answers_and_restarts_after_a_crash(postgres_server: PostgresServer) -> None:
    engine = create_engine(postgres_server.url(), pool_pre_ping=True)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    postgres_server.kill()
    postgres_server.start()
    with engine.connect() as conn:
        assert "PostgreSQL" in conn.execute(text("SELECT version()")).scalar_one()
    engine.dispose()


def test_redis_server_answers_and_loses_everything_on_restart(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url())
    client.set("kpdd:probe", "1")
    assert client.get("kpdd:probe") == b"1"
    redis_server.restart()
    client = redis.Redis.from_url(redis_server.url())
    assert client.get("kpdd:probe") is None
