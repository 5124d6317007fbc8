"""Fixtures for the distributed tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import RedisServer
from tests.workers.cluster import Cluster


@pytest.fixture
def cluster(
    pg_url: str, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cluster]:
    import redis

    redis.Redis.from_url(redis_server.url()).flushall()
    c = Cluster(pg_url, redis_server, tmp_path, monkeypatch)
    yield c
    c.close()
