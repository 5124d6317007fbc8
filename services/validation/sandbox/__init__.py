"""The sandbox for Program-of-Thought programs: untrusted, model-written Python, run by the million.

    with Sandbox() as sandbox:
        result = sandbox.run("step_1 = 48 / 2\\nans = step_1 + 48\\n")
        result.kind, result.answer        # ExecutionKind.OK, Answer(type="float", value="72.0")
        results = sandbox.run_many(programs)   # concurrent, in input order

Two warm fork-servers (`server.py`), started once per worker as fresh interpreters with a
scrubbed environment, pre-import the modules programs use (`basic`: math, cmath, fractions,
decimal, itertools, statistics and common stdlib; `scientific`: the same plus numpy,
single-threaded, and sympy; a program naming numpy or sympy goes to the second) and fork one
child per program. The child (`child.py`) locks itself down before the program's first byte
runs: own session, fresh fds, rlimits (address space, CPU, file size, open files, processes, no
core), an empty temporary working directory, its own unprivileged uid, no new privileges, the
seccomp filter; it runs in the server's empty network namespace and read-only mount namespace,
whose root is a minimal tree (system dirs, the interpreter and its packages, this project's
`services`; not the worker's files, home, checkout or `.env`) (`isolation.py`). The server
enforces the wall clock from outside, kills the program's whole process group, sweeps any strays,
removes the working directory and replies; the host turns the reply into a verdict
(`results.py`). Answers cross the process boundary only as JSON text made in the child.

What holds where is in `docs/sandbox.md`; `Sandbox.isolation` says what holds in this process.
Sandbox modes (`modes.py`, `KPDD_SANDBOX_MODE`): a broker worker refuses to start without every
layer (`IsolationUnavailable`, exit code 2), other commands use the best available unless
`strict` is set, and `permissive` never refuses (development only, a warning at every start).

What the sandbox does NOT protect against:
- Kernel bugs. Every layer is a kernel mechanism; a kernel exploit reachable through the allowed
  system calls (most of them: the seccomp filter is a deny-list) escapes all of them. Run workers
  in a VM or gVisor if programs may be written by an attacker rather than a model.
- Side channels and resource contention: a program can burn its CPU share until its deadline,
  fill the shared tmpfs (`tmpfs_mb`) so that a concurrent program's writes fail, evict caches,
  or time things. Limits are per program, not a fair scheduler.
- Memory the program can read: everything the fork-server holds at fork time (the pre-imported
  modules; the text of programs running at the same time and freed remnants of earlier ones,
  which are not secrets). The server is exec'd fresh and never receives gold answers or keys.
- Cooperation between programs running at the same time (abstract unix sockets are blocked with
  all sockets, but e.g. timing is not), and what the minimal root shows: world-readable files
  under `/usr`, the interpreter's prefixes and import paths (a virtualenv inside a checkout is
  shown whole), this project's `services` package, and a few `/etc` files (`passwd`, `group`,
  `ld.so.cache`, `localtime`, ...). Keep secrets out of those trees.
- Lying about its own answer: a program can write anything as its answer (that is what it is
  for); it cannot change another program's result or the host's state.
- Without root: no per-program uid, so the process limit is approximate and concurrent programs
  share a uid (each can write into the other's working directory). Without root AND without
  unprivileged user namespaces there is no filesystem isolation at all and a program can read
  the worker's `/proc/<pid>/environ` (API keys): never run untrusted programs that way
  (strict mode, the default for workers, refuses). See docs/sandbox.md.
- A fork-server killed with SIGKILL while the worker dies too: its children die with it
  (parent-death signal), but with `max_processes > 1` their own children may live on (when only
  the server dies, the host kills them by uid).
- Wall-clock deadlines on a busy machine: a CPU-bound program gets less CPU before its deadline.
- Where the Python installation is not readable by other users, programs can import only what the
  fork-servers pre-imported (`Sandbox(extra_modules=...)` adds more).
- Non-Linux systems are not supported; the seccomp layer exists only on x86_64.
"""

from __future__ import annotations

from services.validation.sandbox.connection import IsolationUnavailable, SandboxError
from services.validation.sandbox.isolation import IsolationReport
from services.validation.sandbox.limits import SandboxLimits
from services.validation.sandbox.results import Answer, ExecutionKind, ExecutionResult, ServerCpu
from services.validation.sandbox.sandbox import Sandbox

__all__ = [
    "Answer",
    "ExecutionKind",
    "ExecutionResult",
    "IsolationReport",
    "IsolationUnavailable",
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "ServerCpu",
]
