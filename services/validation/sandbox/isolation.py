"""What the fork-server sets up once, before any program runs, and what it managed to get.

As root (the normal case in a worker container) the server moves itself into a new network
namespace (no interface is up: not even loopback is reachable) and a new private mount namespace
in which every mount is remounted read-only and nosuid, `/tmp` is a fresh size-capped tmpfs
holding the programs' working directories (when the interpreter, its packages or this project
live under /tmp, the tmpfs goes on a fresh empty directory there instead, so they stay visible
and /tmp stays read-only), `/run` is an empty read-only tmpfs (no host unix
sockets), and `/proc` is a new instance with `hidepid=2` (a program sees only its own process).
Each concurrent program then runs under its own unused uid (`UID_BASE + 64 * server pid + slot`;
a container whose uid map is not the identity falls back to one shared uid, 65534), so the
kernel's per-uid process limit is exact and the server can kill every process of a program by uid.

Not root: the server tries an unprivileged user namespace to get the same network and mount
namespaces; `/proc` cannot be remounted there, so it is covered by an empty tmpfs (the server
keeps a descriptor of the real one). Programs run under the server's own uid with every
capability dropped; the server makes itself non-dumpable so they cannot read its memory.

Last, the server installs the seccomp filter on itself (every child inherits it). The report
records each layer that did not hold, and why; `Sandbox(strict=True)` refuses to start unless
every layer held.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from services.validation.sandbox import kernel

UID_BASE = 1 << 30  # far above any uid a distribution allocates
UID_BLOCK = 64  # uids per fork-server: one per concurrent program slot
_WORLD_WRITABLE = ("/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")


@dataclass(slots=True)
class IsolationReport:
    """Which isolation layers hold in this fork-server (all True/strings when root on Linux)."""

    root: bool = False
    network: str = "none"  # "netns" | "userns+netns" | "none"
    filesystem: str = "none"  # "read-only" | "tmpfs-overlays" | "none"
    proc_hidepid: bool = False  # programs cannot see other processes in /proc
    per_program_uid: bool = False
    seccomp: bool = False
    workdir_root: str = "/tmp"
    private_tmp: bool = False  # workdir_root is a tmpfs of the server's own mount namespace
    uid_base: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return (
            self.root
            and self.network != "none"
            and self.filesystem == "read-only"
            and self.proc_hidepid
            and self.private_tmp
            and self.per_program_uid
            and self.seccomp
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IsolationReport:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _identity_uid_map() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            rows = [line.split() for line in f]
    except OSError:
        return False
    return rows == [["0", "0", "4294967295"]]


def _enter_user_namespace(report: IsolationReport) -> bool:
    uid, gid = os.getuid(), os.getgid()
    try:
        kernel.unshare(kernel.CLONE_NEWUSER | kernel.CLONE_NEWNS | kernel.CLONE_NEWNET)
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    except OSError as exc:
        report.notes.append(f"no user namespace ({exc.strerror}): no network or mount isolation")
        return False
    report.network = "userns+netns"
    return True


def _mount_tmpfs(target: str, options: str, flags: int) -> None:
    kernel.mount("kpdd-sandbox", target, "tmpfs", flags | kernel.MS_NOSUID | kernel.MS_NODEV, options)


def _code_lives_under(root: str) -> bool:
    """Whether the interpreter, its packages, this project or the working directory are under
    `root`: a tmpfs mounted over it would hide them from programs (lazy imports would fail)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.getcwd(), os.path.dirname(__file__)}
    paths.update(p for p in sys.path if p)
    prefix = os.path.realpath(root).rstrip("/") + "/"
    return any(os.path.realpath(p).startswith(prefix) for p in paths)


def _private_root() -> str:
    """Where the private tmpfs for working directories is mounted: over `/tmp` (hiding the host's
    /tmp), or, when the code itself lives under /tmp, on a fresh empty directory there (then
    /tmp stays visible, read-only). Created before / becomes read-only; the host removes it."""
    if not _code_lives_under("/tmp"):
        return "/tmp"
    root = f"/tmp/kpdd-sandbox-root-{os.getpid()}"
    os.makedirs(root, mode=0o755, exist_ok=True)
    return root


def _setup_mounts(report: IsolationReport, tmpfs_mb: int) -> None:
    try:
        kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    except OSError as exc:
        report.notes.append(f"mounts not private ({exc.strerror}): no filesystem isolation")
        return
    try:
        private_root = _private_root()
    except OSError as exc:
        report.notes.append(f"no private work root ({exc.strerror}): working dirs live in the host's /tmp")
        private_root = None
    try:
        kernel.mount_setattr_recursive("/", kernel.MOUNT_ATTR_RDONLY | kernel.MOUNT_ATTR_NOSUID)
        report.filesystem = "read-only"
    except OSError as exc:
        report.notes.append(
            f"could not remount / read-only ({exc.strerror}); world-writable dirs are covered "
            "by empty read-only tmpfs, other writes are stopped only by file permissions"
        )
        for path in _WORLD_WRITABLE:
            if os.path.isdir(path) and not os.path.islink(path):
                try:
                    _mount_tmpfs(path, "size=4k,mode=0755", kernel.MS_RDONLY)
                except OSError as err:
                    report.notes.append(f"{path} stays writable ({err.strerror})")
        report.filesystem = "tmpfs-overlays"
    if private_root is not None:
        try:
            _mount_tmpfs(private_root, f"size={tmpfs_mb}m,nr_inodes=65536,mode=0755", kernel.MS_NOEXEC)
            report.private_tmp = True
            report.workdir_root = private_root
        except OSError as exc:
            report.notes.append(f"no private /tmp ({exc.strerror}): working dirs live in the host's /tmp")
    if os.path.isdir("/run") and not os.path.islink("/run"):
        try:
            _mount_tmpfs("/run", "size=4k,mode=0755", kernel.MS_RDONLY | kernel.MS_NOEXEC)
        except OSError as exc:
            report.notes.append(f"/run not hidden ({exc.strerror}): host unix sockets there stay visible")
    if not report.root:
        _hide_proc(report)
    if report.root:
        try:
            kernel.mount(
                "proc",
                "/proc",
                "proc",
                kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC,
                "hidepid=2",
            )
            report.proc_hidepid = True
        except OSError as exc:
            report.notes.append(f"no private /proc ({exc.strerror}): programs can list host processes")


_proc_fd: int | None = None


def proc_dir_fd() -> int | None:
    """An fd of the real /proc when an empty tmpfs hides it (user-namespace mode), else None."""
    return _proc_fd


def _hide_proc(report: IsolationReport) -> None:
    # Without a PID namespace a new proc instance cannot be mounted, so /proc is covered by an
    # empty tmpfs; the server keeps a descriptor of the real one for its own sweeps.
    global _proc_fd
    fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _mount_tmpfs("/proc", "size=4k,mode=0555", kernel.MS_RDONLY | kernel.MS_NOEXEC)
    except OSError as exc:
        os.close(fd)
        report.notes.append(f"/proc not hidden ({exc.strerror}): programs can read the worker's /proc")
        return
    _proc_fd = fd
    report.proc_hidepid = True


def setup_isolation(tmpfs_mb: int, run_as_uid: int | None = None) -> IsolationReport:
    """Set up the fork-server's namespaces and mounts; never raises, records what failed.

    `run_as_uid`: drop from root to this uid first (deployments that want no root process at
    all; the server then takes the non-root path).
    """
    report = IsolationReport()
    if run_as_uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(run_as_uid, run_as_uid, run_as_uid)
        os.setresuid(run_as_uid, run_as_uid, run_as_uid)
        kernel.prctl(kernel.PR_SET_DUMPABLE, 1)  # as if started by that uid (else uid_map is root's)
    report.root = os.geteuid() == 0
    if report.root:
        try:
            kernel.unshare(kernel.CLONE_NEWNS | kernel.CLONE_NEWNET)
            report.network = "netns"
            mounts = True
        except OSError as exc:
            report.notes.append(f"no namespaces as root ({exc.strerror})")
            mounts = False
        if _identity_uid_map():
            report.per_program_uid = True
            report.uid_base = UID_BASE + (os.getpid() % (1 << 22)) * UID_BLOCK
        else:
            report.notes.append("uid map is not the identity: programs share uid 65534")
    else:
        mounts = _enter_user_namespace(report)
        report.notes.append("not root: programs run under the server's uid; process limits are approximate")
    if mounts:
        _setup_mounts(report, tmpfs_mb)
    if not report.root:
        # Same uid as the programs: keep them out of /proc/<server>/mem and ptrace range.
        kernel.prctl(kernel.PR_SET_DUMPABLE, 0)
    try:
        # On the server itself, after its own set-up: every child inherits it at no cost.
        kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
        kernel.SeccompFilter().install()
        report.seccomp = True
    except OSError as exc:
        report.notes.append(f"no seccomp filter ({exc.strerror}): network blocked only by the namespace")
    return report
