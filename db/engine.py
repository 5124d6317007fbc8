"""Engine and session factory.

Engines are built lazily and per process (a Celery worker forks after import, and a pool must
never cross a fork), keyed by URL so tests can point at several databases.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[tuple[int, str], Engine] = {}
DEFAULT_POOL_SIZE = 10


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A new engine for `url`. SQLite files get WAL, foreign keys and a busy timeout; their parent
    folder is created if missing."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    # Workers run many threads: a pool smaller than that churns connections (each connect forks
    # a Postgres backend). `get_engine(url, pool_size=threads + a few)` sizes it to the caller.
    kwargs.setdefault("pool_size", DEFAULT_POOL_SIZE)
    kwargs.setdefault("max_overflow", kwargs["pool_size"])
    return create_engine(url, **kwargs)


def get_engine(url: str, pool_size: int | None = None) -> Engine:
    """The engine for `url` in this process, built on first use (`pool_size` applies then)."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        options = {} if pool_size is None or url.startswith("sqlite") else {"pool_size": pool_size}
        engine = _engines[key] = make_engine(url, **options)
    return engine


_autocommit: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def autocommit(engine: Engine) -> Engine:
    """`engine` (same pool) with each statement its own transaction: no BEGIN and no COMMIT or
    ROLLBACK round trips. For a unit of work that is one statement (an upsert, a read) run many
    times a second; several statements that must hold together need `engine.begin()`."""
    option = _autocommit.get(engine)
    if option is None:
        option = _autocommit[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return option


def dispose_engines() -> None:
    """Close every pooled connection of this process (tests, worker shutdown)."""
    for (pid, _url), engine in list(_engines.items()):
        if pid == os.getpid():
            engine.dispose()
    _engines.clear()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any error."""
    with session_factory(engine)() as session, session.begin():
        yield session
