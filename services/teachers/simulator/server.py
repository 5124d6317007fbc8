"""Running the simulator: in a thread (tests), or in the foreground with N worker processes (CLI).

`run_in_thread(config)` starts one server on its own event loop in a daemon thread and returns a
`SimulatorHandle` (`url`, `openai_base_url`, `stats`, `reset()`, `close()`).

`serve(config, on_ready)` loads the problems once, then runs one worker in this process, or with
`workers > 1` forks that many worker processes that each listen on the same port with
SO_REUSEPORT (the kernel spreads connections over them). The parent keeps the port reserved and
waits; SIGINT/SIGTERM stops everything. Counters are shared (see `stats`); rate limits and attempt
numbers are per worker (each worker enforces limit / workers), so with several workers a retry
that lands on another worker counts as a first attempt there. Batch state lives on disk in the
config's `batch_dir`, shared by the workers (by default a temporary directory made here and
removed on exit; one worker alone makes its own).

Built on aiohttp's low-level server (no router, no middleware) with orjson bodies: one worker
serves several thousand requests per second at zero latency (see benchmarks/bench_simulator.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field

from aiohttp import web

from services.config import get_settings
from services.errors import BadInputError
from services.teachers.simulator.app import SimulatorApp
from services.teachers.simulator.bank import ProblemBank
from services.teachers.simulator.config import SimulatorConfig
from services.teachers.simulator.stats import Stats, shared_storage

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 1.0


def build_bank(config: SimulatorConfig) -> ProblemBank:
    """Load the problems named by the config (corpus files, then the database)."""
    bank = ProblemBank()
    for source in config.corpora:
        added = bank.load_corpus(source)
        log.info("loaded %d problems from %s", added, source.path)
    if config.from_db:
        url = config.database_url or get_settings().resolved_database_url
        added = bank.load_database(url)
        log.info("loaded %d problems from the database", added)
    return bank


def _listen_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BadInputError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None
    sock.setblocking(False)
    return sock


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


@dataclass(slots=True)
class _Running:
    lowlevel: web.Server
    server: asyncio.base_events.Server


async def _start(app: SimulatorApp, sock: socket.socket) -> _Running:
    lowlevel = web.Server(app.handle, access_log=None)
    sock.listen(4096)
    server = await asyncio.get_running_loop().create_server(lowlevel, sock=sock, backlog=4096)
    return _Running(lowlevel, server)


async def _stop(running: _Running) -> None:
    running.server.close()
    await running.lowlevel.shutdown(SHUTDOWN_TIMEOUT_S)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(running.server.wait_closed(), SHUTDOWN_TIMEOUT_S)


# --- thread mode (tests) ---------------------------------------------------------------------------


@dataclass(slots=True)
class SimulatorHandle:
    """A simulator running in a background thread of this process."""

    url: str  # e.g. http://127.0.0.1:41234 (the Anthropic SDK's base_url)
    app: SimulatorApp
    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread
    _running: _Running
    _closed: bool = field(default=False)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def stats(self) -> dict[str, int]:
        """Counters so far: requests, answered, rate_limited, fault_<kind>, ... (see stats.py)."""
        return self.app.stats.snapshot()

    def reset(self) -> None:
        """Zero the counters, the rate-limit buckets and the attempt numbers; forget the batches."""
        asyncio.run_coroutine_threadsafe(self._reset(), self._loop).result(timeout=10)

    async def _reset(self) -> None:
        self.app.reset()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        future = asyncio.run_coroutine_threadsafe(_stop(self._running), self._loop)
        with contextlib.suppress(Exception):
            future.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def run_in_thread(config: SimulatorConfig, bank: ProblemBank | None = None) -> SimulatorHandle:
    """Start a simulator in a daemon thread and return once it accepts connections.

    `bank` lets tests share one loaded ProblemBank between several simulators; by default the
    config's corpora and database are loaded. Only `workers=1` is possible here.
    """
    if config.workers != 1:
        raise ValueError("run_in_thread runs one worker; use serve() or the CLI for --workers")
    bank = bank if bank is not None else build_bank(config)
    app = SimulatorApp(config, bank, Stats())
    sock = _listen_socket(config.host, config.port, reuse_port=False)
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    started: dict[str, object] = {}
    ready = threading.Event()

    def target() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["running"] = loop.run_until_complete(_start(app, sock))
        except BaseException as exc:
            started["error"] = exc
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=target, name=f"teacher-sim:{port}", daemon=True)
    thread.start()
    ready.wait()
    if "error" in started:
        raise started["error"]  # type: ignore[misc]
    running = started["running"]
    assert isinstance(running, _Running)
    return SimulatorHandle(_url(config.host, port), app, loop, thread, running)


# --- foreground mode (CLI), one or several worker processes ----------------------------------------


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    """Stop when the parent process is gone (killed with SIGKILL, it cannot stop us itself)."""
    while not stop.is_set():
        if os.getppid() != parent:
            stop.set()
        await asyncio.sleep(1.0)


async def _serve_worker(
    app: SimulatorApp, sock: socket.socket, on_ready: Callable[[], None], parent: int | None = None
) -> None:
    running = await _start(app, sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_parent(parent, stop)) if parent is not None else None
    on_ready()
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        await _stop(running)


def _worker_main(
    config: SimulatorConfig,
    bank: ProblemBank,
    storage: MutableSequence[int],
    index: int,
    port: int,
    ready: multiprocessing.synchronize.Event,
    parent: int,
) -> None:
    sock = _listen_socket(config.host, port, reuse_port=True)
    app = SimulatorApp(config, bank, Stats(storage, index, config.workers), worker=index)
    asyncio.run(_serve_worker(app, sock, ready.set, parent))


def serve(config: SimulatorConfig, on_ready: Callable[[str, int], None] | None = None) -> None:
    """Run the simulator in the foreground until SIGINT/SIGTERM. `on_ready(url, n_problems)` is
    called once every worker accepts connections."""
    bank = build_bank(config)
    if config.workers == 1:
        sock = _listen_socket(config.host, config.port, reuse_port=False)
        url = _url(config.host, sock.getsockname()[1])
        app = SimulatorApp(config, bank, Stats())
        asyncio.run(_serve_worker(app, sock, lambda: on_ready(url, len(bank)) if on_ready else None))
        return
    batch_tmp = None
    if config.batch_dir is None:  # one directory for every worker's batch state
        batch_tmp = tempfile.TemporaryDirectory(prefix="kpdd-sim-batches-")
        config = dataclasses.replace(config, batch_dir=batch_tmp.name)
    # Reserve the port with a bound, never-listening socket of the same SO_REUSEPORT group: it
    # receives no connections, and keeps the port ours while the workers bind it.
    reserve = _listen_socket(config.host, config.port, reuse_port=True)
    port = reserve.getsockname()[1]
    storage = shared_storage(config.workers)
    ctx = multiprocessing.get_context("fork")  # workers inherit the loaded bank, copy-on-write
    events = [ctx.Event() for _ in range(config.workers)]
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(config, bank, storage, i, port, events[i], os.getpid()),
            name=f"teacher-sim-worker-{i}",
            daemon=True,
        )
        for i in range(config.workers)
    ]
    stopping = threading.Event()

    def stop(_signum: int, _frame: object) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for proc in procs:
            proc.start()
        for event, proc in zip(events, procs, strict=True):
            while not event.wait(0.1):
                if not proc.is_alive() or stopping.is_set():
                    break
        if all(e.is_set() for e in events) and on_ready is not None:
            on_ready(_url(config.host, port), len(bank))
        while not stopping.is_set() and all(p.is_alive() for p in procs):
            stopping.wait(0.2)
    finally:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join(timeout=5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reserve.close()
        if batch_tmp is not None:
            batch_tmp.cleanup()
    failed = [p for p in procs if p.exitcode not in (0, -signal.SIGTERM, None)]
    if failed and not stopping.is_set():
        from services.errors import RunFailure

        raise RunFailure(f"{len(failed)} simulator worker(s) exited with an error; see the log above")
