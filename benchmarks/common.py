"""What the benchmark scripts share: a Postgres database to run against, a child process
measured on its own (wall time and its own peak RSS, read with `os.wait4`), and the CPU of a
process tree read from `/proc`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from db.migrate import upgrade

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


@contextmanager
def postgres_database(database_url: str | None, name: str = "kpdd_bench") -> Iterator[str]:
    """`database_url` migrated to head, or else a new database on a private PostgreSQL server
    started from the machine's binaries (as the test suite does) and removed afterwards."""
    if database_url:
        upgrade(database_url)
        yield database_url
        return
    from tests.servers import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        engine = create_engine(server.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        engine.dispose()
        url = server.url(name)
        upgrade(url)
        yield url
    finally:
        server.close()


def run_child(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, bytes]:
    """Run `python ARGV...` from the repository root; returns (seconds, the child's own peak RSS
    in MB, its stdout). A non-zero exit stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *argv], env={**os.environ, **(env or {})}, cwd=REPO, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed with exit code {code}")
    return seconds, usage.ru_maxrss / 1024, out


def cpu_seconds(roots: list[int]) -> float:
    """CPU of the processes `roots` and all their live descendants: each one's own utime +
    stime, plus cutime + cstime, the CPU of its children it has reaped (the sandbox's program
    processes, reaped by its fork-server; Postgres backends that exited). Without the latter
    a PoT run's programs would not be counted at all."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        times[pid] = sum(int(f) for f in fields[11:15]) / TICKS
    total, stack, seen = 0.0, list(roots), set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += times.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total
