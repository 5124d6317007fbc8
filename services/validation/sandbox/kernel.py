"""Thin ctypes wrappers over the Linux calls Python 3.11's `os` lacks.

`unshare`, `mount`, `umount2`, `pivot_root`, `mount_setattr`, `prctl` and a seccomp-BPF filter.
Every wrapper raises `OSError` with the real errno on failure, so callers can fall back and say
exactly what did not hold. Nothing here runs untrusted code; `child.py` and `isolation.py` decide
what to call.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000
CLONE_NAMESPACES = (
    CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP
)

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

MNT_DETACH = 0x2

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
AT_FDCWD = -100
AT_RECURSIVE = 0x8000

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_MODE_FILTER = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# The same C library, called with the GIL held (PyDLL): for `fork_without_handlers` only.
_libc_gil = ctypes.PyDLL(None, use_errno=True)
_libc_gil.fork.restype = ctypes.c_int
_libc_gil.fork.argtypes = ()


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _check(
        _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount {target}",
    )


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


_NR_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2) (glibc has no wrapper). Docker's default seccomp profile denies it."""
    nr = _NR_PIVOT_ROOT.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, "pivot_root: unknown syscall number on this architecture")
    _check(_libc.syscall(ctypes.c_long(nr), new_root.encode(), put_old.encode()), "pivot_root")


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


_NR_MOUNT_SETATTR = {"x86_64": 442, "aarch64": 442}


def mount_setattr_recursive(path: str, attr_set: int, propagation: int = 0) -> None:
    """Set mount attributes on `path` and every mount below it (Linux 5.12+)."""
    nr = _NR_MOUNT_SETATTR.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, "mount_setattr: unknown syscall number on this architecture")
    attr = _MountAttr(attr_set, 0, propagation, 0)
    _check(
        _libc.syscall(
            ctypes.c_long(nr),
            ctypes.c_int(AT_FDCWD),
            path.encode(),
            ctypes.c_uint(AT_RECURSIVE),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        "mount_setattr",
    )


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(arg3),
            ctypes.c_ulong(arg4),
            ctypes.c_ulong(arg5),
        ),
        "prctl",
    )


def fork_without_handlers() -> int:
    """fork(2) without CPython's after-fork work: returns 0 in the child, the pid in the parent.

    `os.fork()` runs `PyOS_AfterFork_Child` in the child: it re-creates the GIL, the import lock
    and the runtime's locks (in case another thread held them) and then every
    `os.register_at_fork` callback (threading, random, logging, ...). That costs a fresh child
    0.2 to 0.5 ms of CPU, mostly copy-on-write faults on the objects those callbacks touch. It is
    only needed when other threads exist; the fork-server has none (it checks, and uses
    `os.fork()` otherwise), so the child's interpreter state is the server's, consistent as it
    was: this thread holds the GIL, no lock is held by anyone else. glibc's own fork handlers
    (malloc's locks) still run. What the skipped callbacks would have done that matters is
    redone by the caller (the server reseeds `random` before every fork).
    """
    pid = _libc_gil.fork()
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fork: {os.strerror(err)}")
    return int(pid)


# prctl with fixed argument types: what each forked child calls. ctypes then converts plain ints
# itself, without the five wrapper objects `prctl()` makes per call.
_prctl_typed = _libc["prctl"]
_prctl_typed.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_prctl_typed.restype = ctypes.c_int


def prctl2(option: int, arg2: int) -> None:
    """prctl(option, arg2, 0, 0, 0); raises `OSError`."""
    if _prctl_typed(option, arg2, 0, 0, 0) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl: {os.strerror(err)}")


# --- seccomp ---------------------------------------------------------------------------------


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00
_BPF_JMP_JGE_K = 0x05 | 0x30 | 0x00
_BPF_JMP_JSET_K = 0x05 | 0x40 | 0x00
_BPF_RET_K = 0x06 | 0x00
_RET_KILL_PROCESS = 0x80000000
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000

# x86_64 numbers only: a wrong number would silently allow or deny the wrong call, so other
# architectures get no filter (and `isolation` says so) rather than an untested table.
_X86_64_DENIED = {
    41: errno.EPERM,  # socket: no network of any family, no unix sockets to host services
    101: errno.EPERM,  # ptrace
    155: errno.EPERM,  # pivot_root
    161: errno.EPERM,  # chroot
    165: errno.EPERM,  # mount
    166: errno.EPERM,  # umount2
    248: errno.EPERM,  # add_key
    249: errno.EPERM,  # request_key
    250: errno.EPERM,  # keyctl
    272: errno.EPERM,  # unshare
    298: errno.EPERM,  # perf_event_open
    308: errno.EPERM,  # setns
    310: errno.EPERM,  # process_vm_readv
    311: errno.EPERM,  # process_vm_writev
    321: errno.EPERM,  # bpf
    323: errno.EPERM,  # userfaultfd
    425: errno.EPERM,  # io_uring_setup (io_uring can open sockets without socket())
    426: errno.EPERM,  # io_uring_enter
    427: errno.EPERM,  # io_uring_register
    428: errno.EPERM,  # open_tree
    429: errno.EPERM,  # move_mount
    430: errno.EPERM,  # fsopen
    432: errno.EPERM,  # fsmount
    435: errno.ENOSYS,  # clone3: flags live in memory BPF cannot read; libc falls back to clone
    442: errno.EPERM,  # mount_setattr
    # Cross-process calls that only need the same uid (the non-root fallback shares one):
    256: errno.EPERM,  # migrate_pages
    274: errno.EPERM,  # get_robust_list
    279: errno.EPERM,  # move_pages
    312: errno.EPERM,  # kcmp
    438: errno.EPERM,  # pidfd_getfd
    440: errno.EPERM,  # process_madvise
}
# Calls that act on another process named by the first argument; in shared-uid mode each child
# adds a filter allowing them only on itself (`SeccompFilter.signal_guard`).
_X86_64_PID_TARGETED = (62, 129, 200, 234, 297, 302)  # kill, rt_sigqueueinfo, tkill, tgkill,
# rt_tgsigqueueinfo, prlimit64
_X86_64_PIDFD = (424, 434)  # pidfd_send_signal, pidfd_open
_X86_64_CLONE = 56


class SeccompFilter:
    """A compiled seccomp-BPF program (x86_64 only).

    The default filter is installed once on the fork-server itself, after its own set-up, so
    every child inherits it at no cost. It denies (with an errno, so Python raises a clean
    `OSError`) the system calls a math program never needs and an escape would: sockets of every
    family, ptrace and cross-process memory access, namespace and mount manipulation, keyrings,
    bpf, io_uring, and `clone` with any namespace flag; it kills the process on a foreign syscall
    ABI (x32, i386). It is a deny-list: everything else is allowed.
    """

    def __init__(self, insns: list[tuple[int, int, int, int]] | None = None) -> None:
        if insns is None:
            insns = self._deny_list()
        self._array = (_SockFilter * len(insns))(*(_SockFilter(*i) for i in insns))
        self._prog = _SockFprog(len(insns), ctypes.cast(self._array, ctypes.POINTER(_SockFilter)))

    @staticmethod
    def _prologue() -> list[tuple[int, int, int, int]]:
        if platform.machine() != "x86_64":
            raise OSError(errno.ENOSYS, f"no seccomp syscall table for {platform.machine()}")
        return [
            (_BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
            (_BPF_JMP_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64),
            (_BPF_RET_K, 0, 0, _RET_KILL_PROCESS),
            (_BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
            (_BPF_JMP_JGE_K, 0, 1, _X32_SYSCALL_BIT),
            (_BPF_RET_K, 0, 0, _RET_KILL_PROCESS),
        ]

    @classmethod
    def signal_guard(cls, own_pid: int) -> SeccompFilter:
        """A filter letting signals and prlimit target only `own_pid`, its group or itself (0).

        For the shared-uid fallback, where the kernel's own permission check would let a program
        signal the fork-server and the worker (same uid). Stacks on the inherited filter.
        """
        insns = cls._prologue()
        allowed = (own_pid, 0, (-own_pid) & 0xFFFFFFFF)
        for nr in _X86_64_PIDFD:
            insns += [(_BPF_JMP_JEQ_K, 0, 1, nr), (_BPF_RET_K, 0, 0, _RET_ERRNO | errno.EPERM)]
        for nr in _X86_64_PID_TARGETED:
            # if nr matches: load arg0; allow if it is one of `allowed`, else deny; reload nr.
            insns += [
                (_BPF_JMP_JEQ_K, 0, 6, nr),
                (_BPF_LD_W_ABS, 0, 0, 16),
                (_BPF_JMP_JEQ_K, 3, 0, allowed[0]),
                (_BPF_JMP_JEQ_K, 2, 0, allowed[1]),
                (_BPF_JMP_JEQ_K, 1, 0, allowed[2]),
                (_BPF_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
                (_BPF_RET_K, 0, 0, _RET_ALLOW),
            ]
        insns.append((_BPF_RET_K, 0, 0, _RET_ALLOW))
        return cls(insns)

    @classmethod
    def _deny_list(cls) -> list[tuple[int, int, int, int]]:
        insns = cls._prologue()
        for nr, err in sorted(_X86_64_DENIED.items()):
            insns.append((_BPF_JMP_JEQ_K, 0, 1, nr))
            insns.append((_BPF_RET_K, 0, 0, _RET_ERRNO | err))
        insns += [
            (_BPF_JMP_JEQ_K, 0, 3, _X86_64_CLONE),
            (_BPF_LD_W_ABS, 0, 0, 16),  # low 32 bits of args[0]: the clone flags
            (_BPF_JMP_JSET_K, 0, 1, CLONE_NAMESPACES),
            (_BPF_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
            (_BPF_RET_K, 0, 0, _RET_ALLOW),
        ]
        return insns

    def install(self) -> None:
        """Install in the calling process; requires no_new_privs (or CAP_SYS_ADMIN). Irreversible."""
        _check(
            _libc.prctl(
                ctypes.c_int(PR_SET_SECCOMP),
                ctypes.c_ulong(SECCOMP_MODE_FILTER),
                ctypes.byref(self._prog),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
            ),
            "seccomp",
        )


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def drop_capabilities() -> None:
    """Clear the effective, permitted and inheritable capability sets of the calling thread."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
