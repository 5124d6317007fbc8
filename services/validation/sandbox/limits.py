"""`SandboxLimits`: what one program may use, and how each limit is enforced.

Every limit is enforced by the kernel or from outside the program, never by code the program
could catch or patch:

- `timeout_s`: wall clock, measured by the fork-server from the fork; at the deadline it sends
  SIGKILL to the program's process group and, where it can, every process of the program's uid.
  `RLIMIT_CPU` (`ceil(timeout_s) + 1` s, then SIGKILL one second later) backs it up.
- `memory_mb`: `RLIMIT_AS`, counted on top of the address space the pre-imported runtime already
  maps at fork (numpy and sympy reserve far more than they touch), so the figure means "new
  memory this program may map".
- `max_output_bytes`: stdout and stderr together, read as they arrive; one byte more and the
  program is killed (`output_cap`). `stdout_excerpt_bytes` of it are kept in the result.
- `max_file_bytes` (`RLIMIT_FSIZE`), `max_open_files` (`RLIMIT_NOFILE`), core dumps off.
- `max_processes`: `RLIMIT_NPROC`, counted per uid, so it holds only when the fork-server runs
  as root and gives each concurrent program its own uid. The default 1 means the program can
  start no process and no thread. Above 1, threads work and the server sweeps the uid after the
  program ends (a stray that called `setsid()` is killed too).
- `max_answer_chars` / `max_answer_digits`: how much of the answer comes back; a longer text is
  cut (and flagged), a longer integer is an `AnswerTooLarge` error rather than a wrong number.
- `max_program_bytes`: a longer program is not sent to the server at all (`ProgramTooLarge`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(slots=True, frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock for the whole program, answer conversion included
    memory_mb: int = 512  # address space beyond the pre-imported runtime
    max_output_bytes: int = 1 << 20  # stdout + stderr; more is `output_cap`
    stdout_excerpt_bytes: int = 4096  # kept in `ExecutionResult.stdout`
    max_file_bytes: int = 16 << 20  # largest file the program may write (in its temp dir)
    max_open_files: int = 64
    max_processes: int = 1  # tasks (processes and threads) of the program; 1 = none besides it
    max_answer_chars: int = 1000  # a text answer longer than this is cut and flagged
    max_answer_digits: int = 4300  # an integer answer longer than this is an error
    max_program_bytes: int = 1 << 20  # a longer program is not run (error `ProgramTooLarge`)

    def __post_init__(self) -> None:
        if not (0 < self.timeout_s <= 3600):
            raise ValueError(f"timeout_s must be in (0, 3600], got {self.timeout_s}")
        if not (16 <= self.memory_mb <= 1 << 20):
            raise ValueError(f"memory_mb must be in [16, 1048576], got {self.memory_mb}")
        if self.max_output_bytes < 0 or self.stdout_excerpt_bytes < 0:
            raise ValueError("max_output_bytes and stdout_excerpt_bytes must be >= 0")
        if self.max_file_bytes < 0:
            raise ValueError(f"max_file_bytes must be >= 0, got {self.max_file_bytes}")
        if not (8 <= self.max_open_files <= 4096):
            raise ValueError(f"max_open_files must be in [8, 4096], got {self.max_open_files}")
        if not (1 <= self.max_processes <= 1024):
            raise ValueError(f"max_processes must be in [1, 1024], got {self.max_processes}")
        if not (1 <= self.max_answer_chars <= 1 << 20) or not (1 <= self.max_answer_digits <= 1 << 20):
            raise ValueError("max_answer_chars and max_answer_digits must be in [1, 1048576]")
        if not (1 <= self.max_program_bytes <= 32 << 20):
            raise ValueError(f"max_program_bytes must be in [1, 33554432], got {self.max_program_bytes}")

    @property
    def cpu_seconds(self) -> int:
        """The soft `RLIMIT_CPU`: a backstop a little above the wall-clock deadline."""
        return math.ceil(self.timeout_s) + 1

    def with_overrides(self, **changes: Any) -> SandboxLimits:
        """A copy with the given fields changed; `None` values are ignored."""
        given = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **given) if given else self

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> SandboxLimits:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown limit fields: {sorted(unknown)}")
        return cls(**data)
