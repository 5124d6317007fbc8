"""`Sandbox`: the host side. Starts the fork-servers, sends programs, turns replies into results.

There are two warm fork-servers, so that the common case stays cheap: forking a process costs in
proportion to the memory it has touched, and sympy alone triples it.
- `basic` pre-imports the standard library a math program uses (math, fractions, decimal,
  itertools, statistics, ...). It runs every program whose text does not mention numpy or sympy.
- `scientific` pre-imports the same plus numpy (single-threaded) and sympy, and runs the rest.
A program that reaches numpy or sympy without naming them (`__import__("sym" + "py")`) still
works in `basic` where the installation is world-readable, paying the import from its own time.

One `Sandbox` per worker process (create it after the worker forks; a `Sandbox` inherited across
`fork()` notices and starts its own servers). Calls are serialised by a lock, so one instance can
be shared by threads; throughput comes from `run_many`, which keeps every slot busy. A program's
failure is data (an `ExecutionResult`); `SandboxError` means the sandbox itself failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from services.validation.sandbox.connection import (
    IsolationUnavailable,
    SandboxError,
    ServerConnection,
    exchange,
)
from services.validation.sandbox.isolation import IsolationReport
from services.validation.sandbox.limits import SandboxLimits
from services.validation.sandbox.modes import PERMISSIVE_HINT, configured_mode, strict_for
from services.validation.sandbox.preload import BASIC_PRELOAD, SCIENTIFIC_PRELOAD
from services.validation.sandbox.protocol import ProtocolError, encode_request
from services.validation.sandbox.results import (
    ExecutionKind,
    ExecutionResult,
    ServerCpu,
    result_from_reply,
)

log = logging.getLogger(__name__)
_REPLY_GRACE_S = 30.0  # beyond a program's deadline, how long a server may take to answer
_SCIENTIFIC_RE = re.compile(r"numpy|sympy")


_live_sandboxes: weakref.WeakSet[Sandbox] = weakref.WeakSet()


def _forget_servers_in_child() -> None:
    # A forked worker must not keep the parent's pipes open: the parent's servers would then never
    # see EOF when the parent closes them. The child starts its own servers when it needs them.
    for sandbox in list(_live_sandboxes):
        sandbox._drop_inherited_servers()


os.register_at_fork(after_in_child=_forget_servers_in_child)


def refusal(isolation: IsolationReport) -> str:
    """The one-line message of a strict sandbox that will not start: what is missing, why, how to fix."""
    remedy = isolation.remedy()
    return (
        "the sandbox cannot isolate programs fully here, and strict mode refuses to run them: "
        + "; ".join(isolation.missing() or ["unknown reason"])
        + ". To fix: "
        + (remedy + "; " if remedy else "")
        + PERMISSIVE_HINT
    )


class Sandbox:
    """Runs untrusted Program-of-Thought programs; see the package docstring for the guarantees.

    `limits`: defaults for every program (override per call). `parallelism`: programs run at once
    per server (default: twice the CPUs this process may use). `strict`: refuse to start unless every
    isolation layer holds (`isolation.full`), raising `IsolationUnavailable`; None (the default)
    follows `KPDD_SANDBOX_MODE` for a sandbox outside a worker (`modes.py`: strict only in
    `strict` mode). `tmpfs_mb`: size of the private tmpfs the working
    directories of one server share. `extra_modules`: more modules for both servers to pre-import.
    `scientific`: start the numpy/sympy server (else those programs run in `basic`).
    `run_as_uid`: have the servers drop root for this uid right after pre-importing (they then take
    the non-root path; see docs/sandbox.md).
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        parallelism: int | None = None,
        strict: bool | None = None,
        tmpfs_mb: int = 256,
        extra_modules: Sequence[str] = (),
        scientific: bool = True,
        run_as_uid: int | None = None,
        start_timeout_s: float = 120.0,
    ) -> None:
        self.limits = limits or SandboxLimits()
        # Twice the CPUs by default: the fork-server's own work (fork, reap, sweep) then overlaps
        # the programs' (about 15 % more programs/s on 2 cores); the price is that CPU-bound
        # programs share a core and reach their wall-clock deadline sooner.
        self.parallelism = parallelism or min(64, 2 * len(os.sched_getaffinity(0)))
        if not 1 <= self.parallelism <= 64:
            raise ValueError(f"parallelism must be in [1, 64], got {self.parallelism}")
        if not 16 <= tmpfs_mb <= 1 << 20:
            raise ValueError(f"tmpfs_mb must be in [16, 1048576], got {tmpfs_mb}")
        mode = "strict" if strict else configured_mode()
        self.strict = strict_for(mode, worker=False) if strict is None else strict
        self.permissive = mode == "permissive"  # explicitly allowed: warn at every start
        common = [f"--parallelism={self.parallelism}", f"--tmpfs-mb={tmpfs_mb}"]
        if run_as_uid is not None:
            common.append(f"--run-as-uid={run_as_uid}")
        self._server_args = {"basic": [*common, "--preload=" + ",".join((*BASIC_PRELOAD, *extra_modules))]}
        if scientific:
            self._server_args["scientific"] = [
                *common,
                "--preload=" + ",".join((*SCIENTIFIC_PRELOAD, *extra_modules)),
            ]
        self._start_timeout_s = start_timeout_s
        self._servers: dict[str, ServerConnection] = {}
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._next_id = 0
        _live_sandboxes.add(self)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Start the fork-servers (idempotent). Raises `SandboxError` if one cannot start."""
        with self._lock:
            self._ensure_servers()
        return self

    def close(self) -> None:
        """Stop the fork-servers; running programs are killed. Safe to call twice."""
        with self._lock:
            if os.getpid() == self._owner_pid:
                for server in self._servers.values():
                    server.close()
                    if server.isolation.host_dir:
                        # The empty mount point the server made in the host's /tmp.
                        with contextlib.suppress(OSError):
                            os.rmdir(server.isolation.host_dir)
            self._servers = {}

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _drop_inherited_servers(self) -> None:
        for server in self._servers.values():
            server.abandon()
        self._servers, self._owner_pid = {}, os.getpid()
        self._lock = threading.Lock()  # a lock held by another thread at fork time stays held

    def _ensure_servers(self) -> dict[str, ServerConnection]:
        if os.getpid() != self._owner_pid:  # inherited across fork: the parent owns those servers
            self._drop_inherited_servers()
        for name, server in list(self._servers.items()):
            if not server.alive():
                server.kill()
                del self._servers[name]
        missing = [name for name in self._server_args if name not in self._servers]
        started: dict[str, ServerConnection] = {}
        try:
            for name in missing:  # spawned together, so their imports overlap
                started[name] = ServerConnection(name, self._server_args[name])
            for server in started.values():
                server.wait_ready(self._start_timeout_s)
                if self.strict and not server.isolation.full:
                    raise IsolationUnavailable(refusal(server.isolation))
        except BaseException:
            for server in started.values():
                server.kill()
            raise
        for server in started.values():
            if not server.isolation.full:
                log.warning(
                    "sandbox fork-server %s runs with partial isolation%s: %s",
                    server.name,
                    " (KPDD_SANDBOX_MODE=permissive)" if self.permissive else "",
                    "; ".join(server.isolation.missing()),
                )
            elif self.permissive:
                log.warning(
                    "KPDD_SANDBOX_MODE=permissive: sandbox fork-server %s would run programs without "
                    "full isolation (it has it here)",
                    server.name,
                )
        self._servers.update(started)
        return self._servers

    @property
    def isolation(self) -> IsolationReport:
        """What the basic fork-server managed to set up (starts the servers if needed)."""
        self.start()
        return self._servers["basic"].isolation

    @property
    def server_pids(self) -> dict[str, int]:
        """The fork-servers' pids by name (`basic`, `scientific`); empty before `start()`."""
        return {name: s.pid for name, s in self._servers.items()}

    def uid_ranges(self) -> list[range]:
        """The uids programs of this sandbox run under (empty when they share the server's)."""
        ranges = []
        for server in self._servers.values():
            if server.isolation.per_program_uid and server.isolation.uid_base is not None:
                ranges.append(range(server.isolation.uid_base, server.isolation.uid_base + self.parallelism))
        return ranges

    # --- running programs --------------------------------------------------------------------

    def route(self, program: str) -> str:
        """Which server runs `program`: `scientific` if it names numpy or sympy, else `basic`."""
        if "scientific" in self._server_args and _SCIENTIFIC_RE.search(program):
            return "scientific"
        return "basic"

    def run(
        self,
        program: str,
        *,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        limits: SandboxLimits | None = None,
    ) -> ExecutionResult:
        """Run one program. `timeout_s` and `memory_mb` override this call's limits."""
        return self.run_many([program], timeout_s=timeout_s, memory_mb=memory_mb, limits=limits)[0]

    def run_many(
        self,
        programs: Sequence[str],
        *,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        limits: SandboxLimits | None = None,
    ) -> list[ExecutionResult]:
        """Run programs concurrently (`parallelism` at once per server); results in input order.

        Raises `SandboxError` if a fork-server fails; it is restarted on the next call.
        """
        effective = (limits or self.limits).with_overrides(timeout_s=timeout_s, memory_mb=memory_mb)
        wire = effective.to_wire()
        results: list[ExecutionResult | None] = [None] * len(programs)
        with self._lock:
            servers = self._ensure_servers()
            for server in servers.values():
                server.frames.clear()
                server.outbox.clear()
                server.unanswered = 0
            index_of: dict[int, int] = {}
            for index, program in enumerate(programs):
                if len(program) > effective.max_program_bytes or (
                    len(program.encode("utf-8", "surrogatepass")) > effective.max_program_bytes
                ):
                    results[index] = ExecutionResult(
                        ExecutionKind.ERROR,
                        error_type="ProgramTooLarge",
                        error_message=f"more than max_program_bytes ({effective.max_program_bytes}); not run",
                    )
                    continue
                self._next_id += 1
                index_of[self._next_id] = index
                frame = encode_request({"id": self._next_id, "limits": wire}, program)
                servers[self.route(program)].frames.append(frame)

            def on_reply(reply: dict[str, Any]) -> None:
                index = index_of.pop(reply.get("id"), None)  # type: ignore[arg-type]
                if index is None:
                    raise SandboxError(f"a fork-server answered an unknown request: {reply!r:.200}")
                if "error" in reply:
                    raise SandboxError(f"a fork-server could not run a program: {reply['error']}")
                if reply.get("setup_failed"):
                    status = reply.get("exit_code", reply.get("signal"))
                    raise SandboxError(
                        f"a sandbox child failed before its program started (status {status}): "
                        "the limits or isolation could not be applied on this machine"
                    )
                results[index] = result_from_reply(reply, effective.max_answer_chars)

            try:
                exchange(
                    list(servers.values()),
                    on_reply,
                    idle_timeout_s=effective.timeout_s + _REPLY_GRACE_S,
                    window=2 * self.parallelism,
                )
            except (SandboxError, ProtocolError, OSError) as exc:
                for server in servers.values():
                    server.kill()
                self._servers = {}
                if isinstance(exc, SandboxError):
                    raise
                raise SandboxError(f"lost a sandbox fork-server: {exc}") from exc
        return [r for r in results if r is not None]

    def _ask(self, op: str) -> dict[str, dict[str, Any]] | None:
        """Send `op` to every fork-server; their answers by server name, None if one failed."""
        with self._lock:
            servers = self._ensure_servers()
            names: dict[int, str] = {}
            answers: dict[str, dict[str, Any]] = {}
            for name, server in servers.items():
                self._next_id += 1
                names[self._next_id] = name
                server.frames.append(encode_request({"id": self._next_id, "op": op}, ""))

            def on_reply(reply: dict[str, Any]) -> None:
                answers[names.get(reply.get("id"), "?")] = reply  # type: ignore[arg-type]

            try:
                exchange(list(servers.values()), on_reply, idle_timeout_s=10.0, window=1)
            except (SandboxError, ProtocolError, OSError):
                for server in servers.values():
                    server.kill()
                self._servers = {}
                return None
            return answers if set(answers) == set(servers) else None

    def ping(self) -> bool:
        """True if every fork-server answers a no-op request."""
        answers = self._ask("ping")
        return answers is not None and all(a.get("pong") for a in answers.values())

    def cpu_usage(self) -> dict[str, ServerCpu]:
        """CPU used so far by each fork-server and by the children it reaped, by server name.

        The children's CPU is not in this process's `getrusage` (they are the fork-server's
        children, never this process's), so a benchmark must ask for it here. Raises
        `SandboxError` if a server does not answer.
        """
        answers = self._ask("stats")
        if answers is None:
            raise SandboxError("a sandbox fork-server did not answer a stats request")
        return {
            name: ServerCpu(
                float(a.get("server_cpu_s", 0.0)),
                float(a.get("children_cpu_s", 0.0)),
                int(a.get("programs", 0)),
            )
            for name, a in answers.items()
        }
