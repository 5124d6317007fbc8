"""The fork-server: a warm process that forks one locked-down child per program.

Started by `Sandbox` as a fresh interpreter (`python -m services.validation.sandbox.server`) with a
scrubbed environment, so its memory, which every child inherits, holds no gold answer, API key or
anything else of the worker's: only the pre-imported modules and the programs it is running.
It pre-imports the math stack once (numpy single-threaded), freezes the heap for cheap forks, sets
up its namespaces, minimal root, no_new_privs and seccomp filter once (`isolation.py`: a child
inherits them all), says hello, then serves requests over its stdin/stdout pipes.

Per program it keeps its own Python small and forks without CPython's after-fork hooks
(`kernel.fork_without_handlers`; it reseeds `random` instead): after a fork, each page either side
writes while the other shares it costs a copy-on-write fault, most of a program's CPU. It reaps
with `wait4`: each child's CPU goes in its reply (`cpu_s`), the totals answer a `stats` request.

For each program it creates an empty working directory and two pipes, forks, and in the parent
only watches: output (read as it arrives, capped), the report pipe, a pidfd for the exit, and the
wall-clock deadline, at which it SIGKILLs the program's process group (and, where programs may
have several processes, every process of the program's uid or session). It never runs, decodes,
unpickles or compares anything the program made: the report is forwarded to the host as text.
After the exit it reaps, sweeps strays (it is a child subreaper, so orphans come to it), removes
the working directory, replies, and only then reuses the slot. It reads a request only when a
slot is free, so queued programs wait in the kernel's pipe buffer, not in memory a child can read.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import resource
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from services.validation.sandbox import kernel, procfs
from services.validation.sandbox.child import READY, ChildSpec, run_child
from services.validation.sandbox.isolation import IsolationReport, setup_isolation
from services.validation.sandbox.limits import SandboxLimits
from services.validation.sandbox.preload import SCIENTIFIC_PRELOAD, THREAD_ENV, preload
from services.validation.sandbox.protocol import (
    FrameReader,
    ProtocolError,
    encode_reply,
    split_request,
    write_all,
)
from services.validation.sandbox.requests import RequestCache

_SHARED_UID = 65534
_SWEEP_ROUNDS = 2000


@dataclass(slots=True)
class _Running:
    """One program in flight: its child, pipes, deadline, and what it has written so far."""

    req_id: int
    limits: SandboxLimits
    slot: int
    uid: int | None
    workdir: str
    pid: int
    pidfd: int
    out_fd: int | None
    report_fd: int | None
    started: float
    deadline: float
    excerpt: bytearray = field(default_factory=bytearray)
    report: bytearray = field(default_factory=bytearray)
    output_bytes: int = 0
    killed: str | None = None
    status: int | None = None
    cpu_s: float = 0.0  # user + system CPU of the child, from wait4's rusage when it is reaped


class ForkServer:
    """The event loop: requests in, children forked, watched, killed, reaped, swept, replies out.

    Single-threaded (a child's parent-death signal is tied to the thread that forked it).
    """

    def __init__(self, in_fd: int, out_fd: int, parallelism: int, isolation: IsolationReport) -> None:
        self.in_fd, self.out_fd = in_fd, out_fd
        self.isolation = isolation
        self.pid = os.getpid()
        self.free_slots = list(range(parallelism - 1, -1, -1))
        self.running: dict[int, _Running] = {}  # by pid
        self.reader = FrameReader(in_fd)
        # epoll directly, not `selectors`: fewer objects touched (each a copy-on-write fault).
        self.poller = select.epoll()
        self.watched: dict[int, tuple[str, _Running | None]] = {}  # fd -> what it is
        self.requests = RequestCache()  # parsed headers and rlimits, once per distinct set
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.seq = 0
        self.nproc_shared = self._shared_nproc_limit(parallelism)
        self.reading_requests = False
        self.mapped = 0
        # Children's CPU as wait4 reports it when they are reaped (programs and strays alike).
        self.children_cpu_s = 0.0
        self.programs = 0
        # Without other threads a child needs none of CPython's after-fork work (kernel.py).
        self.fork = kernel.fork_without_handlers if threading.active_count() == 1 else os.fork
        self.no_new_privs = kernel.prctl(kernel.PR_GET_NO_NEW_PRIVS) == 1  # children inherit it

    # --- setup helpers ---------------------------------------------------------------------

    def _shared_nproc_limit(self, parallelism: int) -> int:
        """RLIMIT_NPROC when programs share a uid: what the uid runs now plus the programs' share."""
        if self.isolation.per_program_uid:
            return 0
        uid = os.getuid() if not self.isolation.root else _SHARED_UID
        return procfs.count_processes(lambda info: info.uid == uid) + parallelism * 16 + 64

    def _mapped_bytes(self) -> int:
        """The server's address space size, re-read every 64 forks (it grows only slowly)."""
        if self.seq % 64 == 1 or not self.mapped:
            self.mapped = procfs.mapped_bytes()
        return self.mapped

    def _uid_for(self, slot: int) -> int | None:
        if self.isolation.per_program_uid and self.isolation.uid_base is not None:
            return self.isolation.uid_base + slot
        return _SHARED_UID if self.isolation.root else None

    # --- main loop -------------------------------------------------------------------------

    def serve(self) -> None:
        os.set_blocking(self.in_fd, False)
        self._want_requests(True)
        while True:
            now = time.monotonic()
            for run in list(self.running.values()):
                if run.killed is None and now >= run.deadline:
                    self._kill(run, "timeout")
            live = [r.deadline for r in self.running.values() if r.killed is None]
            # Killed children are waited for by their pidfd; the short poll only reaps strays.
            timeout = max(0.0, min(live) - now) if live else (0.05 if self.running else None)
            # Resolved before any is handled: a handler may close an fd whose number a later one
            # then reuses; a stale event still goes to its own (finished) program, which ignores it.
            ready = [self.watched[fd] for fd, _ in self.poller.poll(-1 if timeout is None else timeout)]
            for kind, owner in ready:
                if owner is None:  # the request pipe
                    if not self._read_requests():
                        self.shutdown()
                        return
                elif kind == "out":
                    self._read_output(owner)
                elif kind == "report":
                    self._read_report(owner)
                elif kind == "exit":
                    self._on_exit(owner)
            self._reap()

    def _watch(self, fd: int, kind: str, run: _Running | None) -> None:
        self.poller.register(fd, select.EPOLLIN)
        self.watched[fd] = (kind, run)

    def _unwatch(self, fd: int) -> None:
        self.poller.unregister(fd)
        del self.watched[fd]

    def _want_requests(self, want: bool) -> None:
        if want and not self.reading_requests:
            self._watch(self.in_fd, "request", None)
        elif not want and self.reading_requests:
            self._unwatch(self.in_fd)
        self.reading_requests = want

    def _read_requests(self) -> bool:
        """Start programs while slots are free; False when the host has gone."""
        while self.free_slots:
            body = self.reader.read_frame()
            if body is None:
                return not self.reader.eof
            try:
                req_id, raw_header, program = split_request(body)
            except ProtocolError as exc:
                self._send({"id": None, "error": f"bad request: {exc}"})
                continue
            try:
                op, limits = self.requests.header(raw_header)
            except (ProtocolError, TypeError, ValueError) as exc:
                self._send({"id": req_id, "error": f"bad request header: {exc}"})
                op, limits = None, None
            if op == "ping":
                self._send({"id": req_id, "pong": True, "running": len(self.running)})
            elif op == "stats":
                self._send({"id": req_id, **self.stats()})
            elif op is not None:
                self._send({"id": req_id, "error": f"unknown op {str(op)[:50]!r}"})
            elif limits is not None:  # else the header was bad: answered above
                try:
                    self._start(req_id, limits, program)
                except OSError as exc:  # fork or pipe failed: the host's problem, not the program's
                    self._send({"id": req_id, "error": f"could not start the program: {exc}"})
            program[:] = bytes(len(program))  # zero the program text before the next fork
            program.release()
        self._want_requests(False)
        return True

    def _start(self, req_id: int, limits: SandboxLimits, program: memoryview) -> None:
        slot = self.free_slots[-1]
        uid = self._uid_for(slot)
        self.seq += 1
        workdir = f"{self.isolation.workdir_root or '/tmp'}/kpdd-sandbox-{self.pid}-{self.seq}"
        fds: list[int] = []
        try:
            os.mkdir(workdir, 0o700)
            if uid is not None:
                os.chown(workdir, uid, uid)
            fds += os.pipe2(os.O_CLOEXEC)
            fds += os.pipe2(os.O_CLOEXEC)
            out_r, out_w, rep_r, rep_w = fds
            nproc_limit = limits.max_processes if self.isolation.per_program_uid else self.nproc_shared
            mapped = self._mapped_bytes()
            spec = ChildSpec(
                limits=limits,
                workdir=workdir,
                uid=uid,
                nproc_limit=nproc_limit,
                out_fd=out_w,
                report_fd=rep_w,
                devnull_fd=self.devnull,
                server_pid=self.pid,
                mapped_bytes=mapped,
                drop_capabilities=not self.isolation.root,
                signal_guard=not self.isolation.per_program_uid and self.isolation.seccomp,
                set_no_new_privs=not self.no_new_privs,
                workdir_bytes=workdir.encode(),
                rlimits=self.requests.rlimits(limits, mapped, nproc_limit),
            )
            if self.fork is not os.fork:
                # What random's own after-fork hook would do in the child: a fresh seed per
                # program. Done here, before the fork, so the child does not pay for it.
                random.seed()
            started = time.monotonic()
            pid = self.fork()
        except OSError:
            for fd in fds:
                os.close(fd)
            procfs.remove_tree(workdir)
            raise
        if pid == 0:  # pragma: no cover - the child never returns
            source = bytes(program)
            self.running.clear()
            run_child(spec, source)
        self.free_slots.pop()
        os.close(out_w)
        os.close(rep_w)
        pidfd = os.pidfd_open(pid)
        os.set_blocking(out_r, False)
        os.set_blocking(rep_r, False)
        run = _Running(
            req_id, limits, slot, uid, workdir, pid, pidfd, out_r, rep_r, started, started + limits.timeout_s
        )
        self.running[pid] = run
        self._watch(out_r, "out", run)
        self._watch(rep_r, "report", run)
        self._watch(pidfd, "exit", run)

    # --- watching a child ------------------------------------------------------------------

    def _read_output(self, run: _Running) -> bool:
        """Read what is there now; False when nothing was (EOF closes the pipe)."""
        if run.out_fd is None:
            return False
        try:
            chunk = os.read(run.out_fd, 1 << 16)
        except BlockingIOError:
            return False
        if not chunk:
            self._close_fd(run, "out")
            return False
        run.output_bytes += len(chunk)
        room = run.limits.stdout_excerpt_bytes - len(run.excerpt)
        if room > 0:
            run.excerpt += chunk[:room]
        if run.output_bytes > run.limits.max_output_bytes and run.killed is None:
            self._kill(run, "output_cap")
        return True

    def _read_report(self, run: _Running) -> bool:
        if run.report_fd is None:
            return False
        try:
            chunk = os.read(run.report_fd, 1 << 16)
        except BlockingIOError:
            return False
        if not chunk:
            self._close_fd(run, "report")
            return False
        cap = run.limits.max_answer_chars * 6 + (64 << 10)
        if len(run.report) <= cap:  # beyond it keep draining, so a flood cannot stall the child
            run.report += chunk
        return True

    def _close_fd(self, run: _Running, which: str) -> None:
        fd = run.out_fd if which == "out" else run.report_fd
        if fd is None:
            return
        self._unwatch(fd)
        os.close(fd)
        if which == "out":
            run.out_fd = None
        else:
            run.report_fd = None

    def _kill(self, run: _Running, reason: str) -> None:
        run.killed = run.killed or reason
        with contextlib.suppress(OSError):  # no such group yet: the child is before setsid()
            os.killpg(run.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(run.pidfd, signal.SIGKILL)

    def _reap(self) -> None:
        """Collect every exited child: ours (status kept) and strays handed to us as subreaper."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            cpu = usage.ru_utime + usage.ru_stime
            self.children_cpu_s += cpu
            run = self.running.get(pid)
            if run is not None:
                run.status = status
                run.cpu_s = cpu

    def _on_exit(self, run: _Running) -> None:
        if run.status is None:
            try:
                _, run.status, usage = os.wait4(run.pid, 0)
                run.cpu_s = usage.ru_utime + usage.ru_stime
                self.children_cpu_s += run.cpu_s
            except ChildProcessError:
                run.status = 0
        duration = time.monotonic() - run.started
        self._sweep(run)
        # Every writer is gone now (or swept), so this ends at EOF; a pipe still held open by a
        # stray that survived the sweep is closed as is.
        while self._read_output(run):
            pass
        while self._read_report(run):
            pass
        self._close_fd(run, "out")
        self._close_fd(run, "report")
        self._unwatch(run.pidfd)
        os.close(run.pidfd)
        del self.running[run.pid]
        procfs.remove_tree(run.workdir)
        if not self.isolation.per_program_uid:
            self._clear_shared_tmp()
        reply: dict[str, Any] = {
            "id": run.req_id,
            "killed": run.killed,
            "duration_s": round(duration, 6),
            "cpu_s": round(run.cpu_s, 6),
            "output_bytes": run.output_bytes,
            "stdout": run.excerpt.decode("utf-8", "replace"),
            "stdout_truncated": run.output_bytes > len(run.excerpt),
        }
        ready = run.report[:1] == READY
        report = run.report[1:] if ready else b""
        reply["report"] = report.decode("utf-8", "replace") if report else None
        if not ready and run.killed is None:
            reply["setup_failed"] = True  # the child died before the program could start
        if os.WIFSIGNALED(run.status):
            reply["signal"] = os.WTERMSIG(run.status)
        else:
            reply["exit_code"] = os.waitstatus_to_exitcode(run.status)
        run.excerpt[:] = bytes(len(run.excerpt))
        run.report[:] = bytes(len(run.report))
        self.programs += 1
        self._send(reply)
        self.free_slots.append(run.slot)
        self._want_requests(True)

    def _sweep(self, run: _Running) -> None:
        """Kill and reap every process the program left behind, until none is left.

        With its own uid and `max_processes == 1` the kernel let the program create no process, so
        there is nothing to do. Otherwise: every process of its uid (own-uid mode), or of its
        session or process group, or orphaned to this server (shared-uid mode), repeatedly, since
        killing a stray's parent hands the stray's own children to us.
        """
        if self.isolation.per_program_uid:
            if run.limits.max_processes <= 1:
                return

            def belongs(info: procfs.ProcInfo) -> bool:
                return info.uid == run.uid
        else:
            tracked = set(self.running)

            def belongs(info: procfs.ProcInfo) -> bool:
                ours = run.pid in (info.session, info.pgrp)
                return ours or (info.ppid == self.pid and info.pid not in tracked)

        for _ in range(_SWEEP_ROUNDS):
            found = procfs.list_processes(belongs)
            if not found:
                return
            for pid in found:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.0005)
            self._reap()
        print(f"kpdd sandbox: strays of program {run.req_id} survived the sweep", file=sys.stderr)

    def _clear_shared_tmp(self) -> None:
        """Remove what programs left in the shared work root (same uid: they can write there)."""
        root = self.isolation.workdir_root
        if not self.isolation.private_tmp:
            return  # the host's own /tmp: not ours to clean
        procfs.empty_dir(root, keep={os.path.basename(r.workdir) for r in self.running.values()})

    def stats(self) -> dict[str, Any]:
        """This server's own CPU and its children's (programs and their strays, as reaped)."""
        own = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "server_cpu_s": round(own.ru_utime + own.ru_stime, 6),
            "children_cpu_s": round(self.children_cpu_s, 6),
            "programs": self.programs,
        }

    # --- host side -------------------------------------------------------------------------

    def _send(self, obj: dict[str, Any]) -> None:
        write_all(self.out_fd, encode_reply(obj))

    def shutdown(self) -> None:
        """Kill every running program, sweep and remove its directory (the host has gone)."""
        for run in list(self.running.values()):
            self._kill(run, "shutdown")
        deadline = time.monotonic() + 5
        while self.running and time.monotonic() < deadline:
            self._reap()
            for run in list(self.running.values()):
                if run.status is not None:
                    self._sweep(run)
                    del self.running[run.pid]
                    procfs.remove_tree(run.workdir)
            time.sleep(0.001)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kpdd-sandbox-server")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--tmpfs-mb", type=int, default=256)
    parser.add_argument("--preload", default=",".join(SCIENTIFIC_PRELOAD))
    parser.add_argument("--run-as-uid", type=int, default=None)
    args = parser.parse_args(argv)
    # The protocol pipes move off 0/1 so that nothing (a stray print, a child) can write into them.
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    for fd in (in_fd, out_fd):
        os.set_inheritable(fd, False)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    # No parent-death signal here (it fires when the *thread* that started us exits, and a worker
    # may start the sandbox from any thread): the host's death closes our stdin, and EOF is the
    # signal to kill every program and exit.
    os.environ.clear()  # the host already passes a minimal environment; keep exactly that much
    os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **THREAD_ENV})
    loaded, failed = preload([m for m in args.preload.split(",") if m])
    isolation = setup_isolation(args.tmpfs_mb, args.run_as_uid)
    kernel.prctl(kernel.PR_SET_CHILD_SUBREAPER, 1)
    server = ForkServer(in_fd, out_fd, args.parallelism, isolation)
    gc.collect()
    gc.freeze()  # children's collections then skip the inherited heap: fewer copy-on-write faults
    write_all(
        out_fd,
        encode_reply(
            {
                "ready": True,
                "pid": server.pid,
                "isolation": isolation.as_dict(),
                "loaded": loaded,
                "failed": failed,
            }
        ),
    )
    try:
        server.serve()
    except BrokenPipeError:  # the host went away while we were answering
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
