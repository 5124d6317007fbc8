"""The fork-server's view of the process table and its working directories.

Reads `/proc` (or the descriptor of the real one kept when an empty tmpfs hides it from
programs), so it works the same in every isolation mode.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from services.validation.sandbox.isolation import proc_dir_fd


@dataclass(slots=True)
class ProcInfo:
    pid: int
    ppid: int
    pgrp: int
    session: int
    uid: int
    state: str  # "R", "S", "Z" (zombie: dead, waiting to be reaped), ...


def read_proc(proc_fd: int | None, path: str) -> bytes:
    fd = os.open(path if proc_fd is None else path[len("/proc/") :], os.O_RDONLY, dir_fd=proc_fd)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def iter_processes() -> list[ProcInfo]:
    infos = []
    proc_fd = proc_dir_fd()
    for name in os.listdir("/proc" if proc_fd is None else proc_fd):
        if not name.isdigit():
            continue
        try:
            stat = read_proc(proc_fd, f"/proc/{name}/stat")
            status = read_proc(proc_fd, f"/proc/{name}/status")
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        uid_line = status[status.index(b"\nUid:") + 5 :].split(None, 1)[0]
        infos.append(
            ProcInfo(
                int(name), int(fields[1]), int(fields[2]), int(fields[3]), int(uid_line), fields[0].decode()
            )
        )
    return infos


def list_processes(belongs: Callable[[ProcInfo], bool]) -> list[int]:
    """Pids of the processes (other than this one) for which `belongs` is true."""
    me = os.getpid()
    return [p.pid for p in iter_processes() if p.pid != me and belongs(p)]


def count_processes(belongs: Callable[[ProcInfo], bool]) -> int:
    return len(list_processes(belongs))


def mapped_bytes() -> int:
    statm = read_proc(proc_dir_fd(), f"/proc/{os.getpid()}/statm")
    return int(statm.split()[0]) * os.sysconf("SC_PAGE_SIZE")


def remove_tree(path: str) -> None:
    """Remove a working directory, fast when it is empty (the common case); never follows links."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def empty_dir(root: str, keep: set[str]) -> None:
    """Remove everything in `root` but the entries named in `keep`; never follows links."""
    for name in os.listdir(root):
        if name not in keep:
            path = os.path.join(root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                remove_tree(path)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
