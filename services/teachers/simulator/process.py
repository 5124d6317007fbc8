"""Start the simulator as a child process (`python -m services.teachers.simulator`) and wait for
its ready line. For benchmarks, the demo and tests that need a separate process (several
workers, a kill). The child gets `--port 0` unless the arguments name a port.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from services.errors import RunFailure

READY_TIMEOUT_S = 60.0


@dataclass(slots=True)
class SimulatorProcess:
    """A running simulator child process."""

    process: subprocess.Popen[bytes]
    url: str
    problems: int
    workers: int

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    def close(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _exited(proc: subprocess.Popen[bytes]) -> str:
    return f"the teacher simulator exited with code {proc.returncode} before serving; see its stderr above"


def spawn_simulator(
    args: Sequence[str] = (), *, python: str | None = None, timeout: float = READY_TIMEOUT_S
) -> SimulatorProcess:
    """Run `python -m services.teachers.simulator ARGS` and return once it serves.

    Its stderr is inherited (log lines appear in the parent's stderr). Raises RunFailure if it
    exits or says nothing within `timeout` seconds.
    """
    argv = [python or sys.executable, "-m", "services.teachers.simulator", *args]
    if "--port" not in args:
        argv += ["--port", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=os.environ.copy())
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buffer = b""
    try:
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunFailure(f"the teacher simulator did not get ready within {timeout:.0f}s")
            if not selector.select(min(left, 0.5)):
                if proc.poll() is not None:
                    raise RunFailure(_exited(proc))
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:  # end of file: the child is gone
                proc.wait(5)
                raise RunFailure(_exited(proc))
            buffer += chunk
        line = orjson.loads(buffer.split(b"\n", 1)[0])
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        raise
    finally:
        selector.close()
    return SimulatorProcess(proc, line["url"], int(line["problems"]), int(line["workers"]))
