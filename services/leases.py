"""Keeping short leases alive while work runs: claims on teacher requests and budget holds.

A lease row (a `teacher_calls` claim, a `budget_holds` row) lasts `lease_ttl_s()` seconds
(`KPDD_CLAIM_TTL_S`) unless renewed. Rather than a thread per lease, each process has one
`LeaseKeeper` per kind of row: the holder registers the row id while it works (`held`), and the
keeper's daemon thread renews every registered row in one UPDATE every third of the period. A
process that dies stops renewing, so its rows expire and others may take them over or count
them as outcomes unknown. A renewal that cannot reach the database only logs (the work's own
writes fail too then); two missed renewals in a row still leave the lease a third of its period.

Holders are named `host:pid:thread` (`holder_id`); a keeper renews only rows still named after a
holder of its own process, never a row another process has taken over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

from services.config import get_settings

log = logging.getLogger(__name__)

# Renew: (engine, row ids, holder prefix of this process, ttl) -> rows renewed.
Renew = Callable[[Engine, list[int], str, float], int]


def lease_ttl_s() -> float:
    """How long a claim or a budget hold lasts without renewal (KPDD_CLAIM_TTL_S)."""
    return float(get_settings().claim_ttl_s)


def process_prefix() -> str:
    """`host:pid:` of this process (read at each call: pool processes fork)."""
    return f"{socket.gethostname()}:{os.getpid()}:"


def holder_id() -> str:
    """This thread as the holder of a lease: `host:pid:thread`."""
    return f"{process_prefix()}{threading.get_ident()}"


class LeaseKeeper:
    """One daemon thread renewing the registered rows of one kind (module doc). Thread-safe;
    started on first use in each process."""

    def __init__(self, name: str, renew: Renew) -> None:
        self.name = name
        self.renew = renew
        self._rows: dict[Engine, dict[int, int]] = {}  # engine -> row id -> registrations
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextmanager
    def held(self, engine: Engine, row_id: int) -> Iterator[None]:
        """Keep `row_id` renewed while the block runs."""
        self.add(engine, row_id)
        try:
            yield
        finally:
            self.drop(engine, row_id)

    def add(self, engine: Engine, row_id: int) -> None:
        """Renew `row_id` until as many `drop`s as `add`s."""
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: the thread is not ours
                self._rows = {}
                self._thread = None
                self._pid = os.getpid()
            rows = self._rows.setdefault(engine, {})
            rows[row_id] = rows.get(row_id, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"kpdd-{self.name}-keeper", daemon=True
                )
                self._thread.start()

    def drop(self, engine: Engine, row_id: int) -> None:
        with self._lock:
            rows = self._rows.get(engine, {})
            left = rows.get(row_id, 0) - 1
            if left > 0:
                rows[row_id] = left
            else:
                rows.pop(row_id, None)
                if not rows:
                    self._rows.pop(engine, None)

    def held_ids(self, engine: Engine) -> list[int]:
        with self._lock:
            return sorted(self._rows.get(engine, {}))

    def _run(self) -> None:
        last = time.monotonic()
        while True:
            # Short naps, the period read again after each: a changed KPDD_CLAIM_TTL_S applies
            # within half a second, not after the old period.
            ttl = lease_ttl_s()
            time.sleep(min(0.5, ttl / 3))
            if time.monotonic() - last < ttl / 3:
                continue
            last = time.monotonic()
            with self._lock:
                work = [(engine, sorted(rows)) for engine, rows in self._rows.items() if rows]
            for engine, ids in work:
                try:
                    self.renew(engine, ids, process_prefix(), ttl)
                except Exception as exc:  # the database is away: the work's own writes fail too
                    log.warning("could not renew %d %s lease(s): %s", len(ids), self.name, exc)


__all__ = ["LeaseKeeper", "holder_id", "lease_ttl_s", "process_prefix"]
