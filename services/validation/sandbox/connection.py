"""The host's end of one fork-server: spawning it, and exchanging frames with several at once."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from services.errors import ConfigError, RunFailure
from services.validation.sandbox import procfs
from services.validation.sandbox.isolation import UID_BLOCK, IsolationReport
from services.validation.sandbox.preload import THREAD_ENV
from services.validation.sandbox.protocol import FrameReader, decode_reply

_PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the folder holding `services/`


class SandboxError(RunFailure):
    """The sandbox itself failed (a fork-server would not start, died or stopped answering); the
    programs were not judged and the call may be retried."""


class IsolationUnavailable(ConfigError, SandboxError):
    """A strict sandbox would not start: an isolation layer does not hold on this machine. A
    configuration problem (exit code 2), not a failure of a program; retrying does not help."""


class ServerConnection:
    """One fork-server process and the two pipes to it."""

    def __init__(self, name: str, args: Sequence[str]) -> None:
        self.name = name
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(_PACKAGE_ROOT),
            "PYTHONDONTWRITEBYTECODE": "1",
            **THREAD_ENV,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-s", "-m", "services.validation.sandbox.server", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,  # the worker's environment (API keys, database URLs) stays out of the server
            cwd="/",
            close_fds=True,
            start_new_session=True,  # a Ctrl-C meant for the worker's terminal is not for the server
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.to_fd = self.proc.stdin.fileno()
        self.from_fd = self.proc.stdout.fileno()
        os.set_blocking(self.to_fd, False)
        os.set_blocking(self.from_fd, False)
        self.reader = FrameReader(self.from_fd)
        self.pid = 0
        self.isolation = IsolationReport()
        self.failed_preloads: list[str] = []
        # exchange state
        self.frames: deque[bytes] = deque()
        self.outbox = bytearray()
        self.unanswered = 0

    def wait_ready(self, timeout_s: float) -> None:
        """Read the server's hello; raise `SandboxError` if it does not come in time."""
        deadline = time.monotonic() + timeout_s
        while (body := self.reader.read_frame()) is None:
            if self.reader.eof:
                raise SandboxError(
                    f"the sandbox fork-server ({self.name}) exited at start: {self.proc.wait()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise SandboxError(
                    f"the sandbox fork-server ({self.name}) did not start in {timeout_s:.0f} s"
                )
            poller = select.poll()
            poller.register(self.from_fd, select.POLLIN)
            poller.poll(int(remaining * 1000) + 1)
        hello = decode_reply(body)
        if not hello.get("ready"):
            self.kill()
            raise SandboxError(f"the sandbox fork-server ({self.name}) did not start: {hello!r:.300}")
        self.pid = int(hello["pid"])
        self.isolation = IsolationReport.from_dict(hello.get("isolation") or {})
        self.failed_preloads = list(hello.get("failed") or [])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _pump(self, on_reply: Callable[[dict[str, Any]], None], window: int) -> bool:
        """Move bytes both ways without blocking; True if any reply came in."""
        while self.frames and self.unanswered < window:
            self.outbox += self.frames.popleft()
            self.unanswered += 1
        if self.outbox:
            try:
                del self.outbox[: os.write(self.to_fd, self.outbox)]
            except BlockingIOError:
                pass
            except BrokenPipeError:
                raise SandboxError(f"the sandbox fork-server ({self.name}) closed its input") from None
        got = False
        while (body := self.reader.read_frame()) is not None:
            self.unanswered -= 1
            got = True
            on_reply(decode_reply(body))
        if self.reader.eof:
            raise SandboxError(f"the sandbox fork-server ({self.name}) exited (status {self.proc.poll()})")
        return got

    def busy(self) -> bool:
        return bool(self.frames or self.outbox or self.unanswered)

    def close(self, timeout_s: float = 5.0) -> None:
        """EOF on its input: the server kills what runs, sweeps, removes its dirs and exits."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]

    def abandon(self) -> None:
        """Close this process's copies of the pipes without touching the server (after fork)."""
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]  # our copy of the fd only
        self.proc.returncode = 0  # not our child: never wait for it

    def kill(self) -> None:
        """Kill the server (hung, dead or abandoned) and whatever its programs left running."""
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]
        self.sweep_program_uids()

    def sweep_program_uids(self) -> None:
        """SIGKILL every process still running under this server's program uids.

        Its children die with it (parent-death signal), but their own children, possible when
        `max_processes > 1`, would be orphaned to init; as root the host can find them by uid.
        """
        base = self.isolation.uid_base
        if not self.isolation.per_program_uid or base is None or os.geteuid() != 0:
            return
        uids = range(base, base + UID_BLOCK)
        for _ in range(100):
            strays = procfs.list_processes(lambda info: info.uid in uids and info.state != "Z")
            if not strays:
                return
            for pid in strays:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)


def exchange(
    servers: Sequence[ServerConnection],
    on_reply: Callable[[dict[str, Any]], None],
    *,
    idle_timeout_s: float,
    window: int,
) -> None:
    """Send every server its queued frames (at most `window` unanswered each) and hand each reply
    to `on_reply`, until all are answered. A server that sends nothing for `idle_timeout_s` while
    it owes replies is declared hung: it is killed and `SandboxError` raised.
    """
    last_progress = {s.pid: time.monotonic() for s in servers}
    while any(s.busy() for s in servers):
        progressed = False
        for server in servers:
            if server.busy() and server._pump(on_reply, window):
                last_progress[server.pid] = time.monotonic()
                progressed = True
        if progressed:
            continue
        now = time.monotonic()
        poller = select.poll()
        for server in servers:
            if not server.busy():
                continue
            if now - last_progress[server.pid] > idle_timeout_s:
                server.kill()
                raise SandboxError(
                    f"the sandbox fork-server ({server.name}) stopped answering for {idle_timeout_s:.0f} s"
                )
            poller.register(server.from_fd, select.POLLIN)
            if server.outbox:
                poller.register(server.to_fd, select.POLLOUT)
        poller.poll(1000)
