"""What runs in the forked child: lock the process down, run the program, report its answer.

Order matters and never varies: new session; stdin from /dev/null, stdout and stderr into the
output pipe, the report pipe on fd 3, every other inherited fd closed; resource limits; the
empty working directory; the program's own uid (root only); death with the fork-server, no
dumping (both after the uid change, which resets them), no capabilities (non-root only); no new
privileges and the seccomp filter are inherited (the fork-server set both on itself; no new
privileges is set here only where it did not). Everything here is kept to few Python objects:
each one the child touches costs it a copy-on-write fault on a page it shares with the
fork-server, and those faults are most of a child's CPU. Then the child writes one byte, `R`, to
the report pipe and only then compiles and runs the program. A failure before that point exits
the child (status 70) without running the program, and the missing `R`, which no program can
un-write, tells the server so.

The answer (precedence, documented for callers):
1. the module-level variable `ans`, if the program bound it (even to `None`);
2. otherwise the return value of `solution()`, if the program defined a callable `solution`
   (it is called with no arguments, under the same deadline);
3. otherwise kind `no_answer`.
`sys.exit()` / `sys.exit(0)` / `SystemExit(None)` end the program normally and the answer is then
read as above; any other exit status is an `error` of type `SystemExit`. The child converts the
answer to a plain record (`convert.py`), writes one JSON report to fd 3 and leaves with
`os._exit`, so atexit handlers, lingering threads and finalizers never run.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import resource
import signal
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

from services.validation.sandbox import kernel
from services.validation.sandbox.convert import AnswerTooLarge, convert_answer
from services.validation.sandbox.limits import SandboxLimits

REPORT_FD = 3
READY = b"R"  # first byte on the report pipe: the lock-down completed, the program starts
SETUP_FAILED_STATUS = 70
_MESSAGE_CHARS = 500

# Bound now, in the fork-server: a program that patches json or os cannot stop its report
# from being written (it can only make its own report wrong, which it could do by setting ans).
_dumps = json.dumps
_quote = json.encoder.encode_basestring_ascii  # C: a str as an ASCII-only JSON string literal
_write = os.write
_exit = os._exit


@dataclass(slots=True)
class ChildSpec:
    """Everything a child needs, prepared by the fork-server before `fork()`."""

    limits: SandboxLimits
    workdir: str
    uid: int | None  # switch to this uid and gid (root only)
    nproc_limit: int
    out_fd: int  # write end of the stdout+stderr pipe
    report_fd: int  # write end of the report pipe
    devnull_fd: int
    server_pid: int
    mapped_bytes: int  # the address space the fork-server maps at fork: RLIMIT_AS counts on top
    drop_capabilities: bool
    signal_guard: bool  # programs share a uid with others: confine signals and prlimit to self
    set_no_new_privs: bool = True  # False when the fork-server has it already (fork keeps it)
    workdir_bytes: bytes = b""  # `workdir` encoded, for the environment (made by the server)
    rlimits: tuple[tuple[int, tuple[int, int]], ...] = ()  # `resource_limits(...)`; () = compute here


RLimits = tuple[tuple[int, tuple[int, int]], ...]


def resource_limits(limits: SandboxLimits, mapped_bytes: int, nproc_limit: int) -> RLimits:
    """The (resource, (soft, hard)) pairs a child sets, in order. The fork-server computes them once
    per distinct set (`requests.RequestCache`), so the child only makes the calls: each object it
    touches after the fork costs it a copy-on-write page fault."""
    address_space = mapped_bytes + limits.memory_mb * (1 << 20)
    return (
        (resource.RLIMIT_AS, (address_space, address_space)),
        (resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1)),
        (resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes)),
        (resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files)),
        (resource.RLIMIT_NPROC, (nproc_limit, nproc_limit)),
        (resource.RLIMIT_CORE, (0, 0)),
    )


# The environment's own store (encoded keys and values), written directly in the child: through
# `os.environ[...] = ...` each variable costs a dozen Python calls, each touching shared pages.
_environ_data = getattr(os.environ, "_data", None)
_putenv = os.putenv


def _arrange_fds(spec: ChildSpec) -> None:
    sources = (spec.devnull_fd, spec.out_fd, spec.report_fd)
    if min(sources) > REPORT_FD:  # the usual case: no dup2 below can clobber a source
        moved = list(sources)
    else:  # move the sources above the target numbers first
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in sources]
    os.dup2(moved[0], 0)
    os.dup2(moved[1], 1)
    os.dup2(moved[1], 2)
    os.dup2(moved[2], REPORT_FD)
    os.closerange(REPORT_FD + 1, 1 << 20)


def _set_limits(spec: ChildSpec) -> None:
    setrlimit = resource.setrlimit
    for which, pair in spec.rlimits or resource_limits(spec.limits, spec.mapped_bytes, spec.nproc_limit):
        setrlimit(which, pair)


def _lock_down(spec: ChildSpec) -> None:
    os.setsid()
    _arrange_fds(spec)
    _set_limits(spec)
    os.chdir(spec.workdir)
    if spec.uid is not None:
        os.setgroups([])
        os.setresgid(spec.uid, spec.uid, spec.uid)
        os.setresuid(spec.uid, spec.uid, spec.uid)
    # After the uid change, which clears it; then make sure the server did not die meanwhile.
    kernel.prctl2(kernel.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != spec.server_pid:
        _exit(SETUP_FAILED_STATUS)
    kernel.prctl2(kernel.PR_SET_DUMPABLE, 0)  # after the uid change too (it resets the flag)
    if spec.set_no_new_privs:
        kernel.prctl2(kernel.PR_SET_NO_NEW_PRIVS, 1)
    if spec.drop_capabilities:
        kernel.drop_capabilities()
    if spec.signal_guard:
        kernel.SeccompFilter.signal_guard(os.getpid()).install()
    # The server's environment is already scrubbed (see server.main); only the dirs are per program.
    if isinstance(_environ_data, dict) and spec.workdir_bytes:
        for key in (b"HOME", b"TMPDIR"):
            _putenv(key, spec.workdir_bytes)
            _environ_data[key] = spec.workdir_bytes
    else:
        os.environ["HOME"] = os.environ["TMPDIR"] = spec.workdir


def _report_json(report: dict[str, Any]) -> str:
    """`json.dumps(report)` for a report's shape (str, bool, None and one nested dict of those),
    without the encoder object `json.dumps` builds per call: in a fresh child that costs about 25
    copy-on-write faults. Anything else goes to `json.dumps`."""
    parts = []
    for key, value in report.items():
        if type(value) is str:
            text = _quote(value)
        elif value is None or value is True or value is False:
            text = "null" if value is None else "true" if value else "false"
        elif type(value) is dict:
            text = _report_json(value)
        else:
            return _dumps(report, ensure_ascii=True)
        parts.append(_quote(key) + ":" + text)
    return "{" + ",".join(parts) + "}"


def _describe(exc: BaseException) -> tuple[str, str]:
    kind = type(exc)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    try:
        message = f"{exc.msg} (line {exc.lineno})" if isinstance(exc, SyntaxError) else str(exc)
    except BaseException:  # the program's own __str__ may raise anything
        message = "<unprintable>"
    return str(name)[:200], str(message)[:_MESSAGE_CHARS]


def _failure(exc: BaseException, while_doing: str = "") -> dict[str, Any]:
    kind = "memory" if issubclass(type(exc), MemoryError) else "error"
    name, message = _describe(exc)
    if while_doing:
        message = f"{while_doing}: {message}"[:_MESSAGE_CHARS]
    return {"kind": kind, "error_type": name, "error_message": message}


_NOT_SET = object()


def _run_program(source: bytes, limits: SandboxLimits) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    try:
        code = compile(source, "<program>", "exec", dont_inherit=True)
        exec(code, namespace)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            return {
                "kind": "error",
                "error_type": "SystemExit",
                "error_message": repr(exc.code)[:_MESSAGE_CHARS],
            }
    except BaseException as exc:
        return _failure(exc)
    value = namespace.get("ans", _NOT_SET)
    if value is _NOT_SET:
        solution = namespace.get("solution")
        if not callable(solution):
            return {
                "kind": "no_answer",
                "error_message": "the program set no `ans` and defined no `solution()`",
            }
        try:
            value = solution()
        except BaseException as exc:
            return _failure(exc, "in solution()")
    try:
        answer = convert_answer(value, max_chars=limits.max_answer_chars, max_digits=limits.max_answer_digits)
    except AnswerTooLarge as exc:
        return {"kind": "error", "error_type": "AnswerTooLarge", "error_message": str(exc)}
    except BaseException as exc:
        return _failure(exc, "converting the answer")
    return {"kind": "ok", "answer": answer}


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:
            pass


def run_child(spec: ChildSpec, program: bytes) -> NoReturn:
    """Run one program in this (freshly forked) process and exit; never returns."""
    try:
        try:
            _lock_down(spec)
            _write(REPORT_FD, READY)
        except BaseException:
            _exit(SETUP_FAILED_STATUS)
        me = os.getpid()
        report = _run_program(program, spec.limits)
        _flush_output()
        if os.getpid() != me:  # a copy the program forked: only the program itself reports
            _exit(0)
        data = _report_json(report).encode()
        while data:
            data = data[_write(REPORT_FD, data) :]
        _exit(0)
    except BaseException:
        _exit(SETUP_FAILED_STATUS)
    _exit(SETUP_FAILED_STATUS)
