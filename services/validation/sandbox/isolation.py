"""What the fork-server sets up once, before any program runs, and what it managed to get.

As root (the normal case in a worker container) the server moves itself into a new network
namespace (no interface is up: not even loopback is reachable) and a new private mount namespace,
and there switches to a **minimal root**: a small tmpfs holding only what programs need, bound
read-only from the host: `/usr` and the `/bin`, `/lib*` links or dirs, a few files of `/etc`
(passwd, group, ld.so.cache, localtime, ...), `/dev/null`, `zero`, `full`, `random`, `urandom`,
the interpreter's prefixes and import paths, and this project's `services` package; nothing else
of the host exists there: not the worker's working directory or checkout (a `.env` file), not
home directories, `/var`, `/srv`, `/opt`, `/run` (host sockets, Docker secrets) or `/tmp`. The
switch is `pivot_root` (the old root is then unmounted: unreachable), or `chroot` where a
container's seccomp profile denies `pivot_root` (Docker's default does): programs have no
capability and their seccomp filter denies `chroot`, so neither way can be escaped by them.
Everything is read-only and nosuid; `/tmp` is a fresh size-capped tmpfs holding the programs'
working directories; `/proc` is a new instance with `hidepid=2` (a program sees only its own
process; the server's group, root, sees all of them). Each concurrent program then runs under its
own unused uid (`UID_BASE + 64 * server pid + slot`; a container whose uid map is not the
identity falls back to one shared uid, 65534), so the kernel's per-uid process limit is exact and
the server can kill every process of a program by uid.

Where the minimal root cannot be built, the server keeps the host's tree, read-only, with `/tmp`
and `/run` covered (files readable by any user stay readable: `IsolationReport.host_files_hidden`
is False and strict mode refuses).

Not root: the server tries an unprivileged user namespace to get the same network and mount
namespaces and the same minimal root; a new `/proc` cannot be mounted there, so programs get an
empty one (the server keeps a descriptor of the real one). Programs run under the server's own
uid with every capability dropped; the server makes itself non-dumpable so they cannot read its
memory.

Last, the server installs the seccomp filter on itself (every child inherits it). The report
records each layer that did not hold, and why (`missing()`), and what would make it hold
(`remedy()`); `Sandbox(strict=True)` refuses to start unless every layer held.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from services.validation.sandbox import kernel
from services.validation.sandbox.rootfs import (
    NEW_ROOT_AT,
    build_root,
    code_lives_under,
    mount_tmpfs,
    switch_root,
)

UID_BASE = 1 << 30  # far above any uid a distribution allocates
UID_BLOCK = 64  # uids per fork-server: one per concurrent program slot
_WORLD_WRITABLE = ("/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")

# The layers, in the order `missing()` lists them, with what each means when it does not hold.
_LAYERS = {
    "root": "not root: programs cannot get a uid of their own",
    "network": "no network namespace",
    "filesystem": "the filesystem is not read-only",
    "host_files": "the worker's files are not hidden from programs",
    "proc": "programs can see other processes in /proc",
    "private_tmp": "no private /tmp",
    "per_program_uid": "programs share one uid",
    "seccomp": "no seccomp filter",
}


@dataclass(slots=True)
class IsolationReport:
    """Which isolation layers hold in this fork-server (all True/strings when root on Linux)."""

    root: bool = False
    network: str = "none"  # "netns" | "userns+netns" | "none"
    filesystem: str = "none"  # "read-only" | "tmpfs-overlays" | "none"
    host_files_hidden: bool = False  # programs see the minimal root, not the host's files
    root_switch: str = ""  # how the minimal root was entered: "pivot_root" | "chroot" | ""
    proc_hidepid: bool = False  # programs cannot see other processes in /proc
    per_program_uid: bool = False
    seccomp: bool = False
    workdir_root: str = "/tmp"
    private_tmp: bool = False  # workdir_root is a tmpfs of the server's own mount namespace
    host_dir: str | None = None  # a directory the server made in the host's /tmp: the host removes it
    uid_base: int | None = None
    notes: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # layer -> why it does not hold

    @property
    def full(self) -> bool:
        return (
            self.root
            and self.network != "none"
            and self.filesystem == "read-only"
            and self.host_files_hidden
            and self.proc_hidepid
            and self.private_tmp
            and self.per_program_uid
            and self.seccomp
        )

    def holds(self) -> dict[str, bool]:
        """Each layer of `full`, by name: whether it holds."""
        return {
            "root": self.root,
            "network": self.network != "none",
            "filesystem": self.filesystem == "read-only",
            "host_files": self.host_files_hidden,
            "proc": self.proc_hidepid,
            "private_tmp": self.private_tmp,
            "per_program_uid": self.per_program_uid,
            "seccomp": self.seccomp,
        }

    def fail(self, layer: str, why: str) -> None:
        """Record why `layer` does not hold (the first reason given for a layer is kept)."""
        self.failures.setdefault(layer, why)
        self.notes.append(why)

    def missing(self) -> list[str]:
        """What is missing and, where known, why: one entry per cause (layers that failed for the
        same reason are named together)."""
        by_cause: dict[str | None, list[str]] = {}
        for layer, ok in self.holds().items():
            if not ok:
                by_cause.setdefault(self.failures.get(layer), []).append(_LAYERS[layer])
        return [", ".join(names) + (f" ({why})" if why else "") for why, names in by_cause.items()]

    def remedy(self) -> str:
        """What would make every layer hold, for the layers that do not."""
        held = self.holds()
        hints = []
        if not held["root"]:
            hints.append(
                "run the worker as root inside its container (docker-compose.yml's worker service: "
                "`user: root` with the capabilities listed there)"
            )
        mount_layers = ("network", "filesystem", "host_files", "proc", "private_tmp")
        if held["root"] and not all(held[layer] for layer in mount_layers):
            reasons = " ".join(self.failures.get(layer, "") for layer in mount_layers)
            if "ENOSYS" in reasons or "Function not implemented" in reasons:
                hints.append("use Linux 5.12 or later (mount_setattr)")
            hints.append(
                "let the worker create namespaces and mounts: in a container, `cap_add: [SYS_ADMIN, "
                "SYS_CHROOT]` and `security_opt: [apparmor:unconfined]` (see docker-compose.yml)"
            )
        if held["root"] and not held["per_program_uid"]:
            hints.append(
                "run the worker in the host's user namespace (Docker with userns-remap: `userns_mode: host`)"
            )
        if not held["seccomp"]:
            hints.append(
                "run on x86_64 Linux with seccomp enabled, and a container seccomp profile that "
                "allows seccomp() (Docker's default does)"
            )
        return "; ".join(hints)

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
        why = f"user namespaces unavailable: {exc.strerror}"
        for layer in ("network", "filesystem", "host_files", "proc", "private_tmp"):
            report.fail(layer, why)
        return False
    report.network = "userns+netns"
    return True


def _enter_minimal_root(report: IsolationReport) -> str | None:
    """Build the minimal root and switch to it; returns the working dirs' root, or None (and
    nothing changed) when it cannot be built."""
    try:
        mount_tmpfs(NEW_ROOT_AT, "size=1m,nr_inodes=4096,mode=0755", 0)
    except OSError as exc:
        report.fail("host_files", f"no minimal root ({exc.strerror})")
        return None
    try:
        workdir_root = build_root(NEW_ROOT_AT, report.root)
    except OSError as exc:
        with contextlib.suppress(OSError):
            kernel.umount2(NEW_ROOT_AT, kernel.MNT_DETACH)
        report.fail("host_files", f"no minimal root ({exc})")
        return None
    try:
        report.root_switch = switch_root(NEW_ROOT_AT)
    except OSError as exc:
        with contextlib.suppress(OSError):
            kernel.umount2(NEW_ROOT_AT, kernel.MNT_DETACH)
        report.fail("host_files", f"no minimal root ({exc.strerror})")
        return None
    report.host_files_hidden = True
    return workdir_root


def _mount_proc(report: IsolationReport) -> None:
    try:
        # hidepid=2: a process sees only those it may ptrace; gid=0: except the server (group
        # root), which must see its programs (another uid, not dumpable) to sweep them.
        kernel.mount(
            "proc", "/proc", "proc", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC, "hidepid=2,gid=0"
        )
        report.proc_hidepid = True
    except OSError as exc:
        report.fail("proc", f"no private /proc: {exc.strerror}")


def _setup_minimal_root(report: IsolationReport, tmpfs_mb: int, workdir_root: str) -> None:
    """In the minimal root: everything read-only, then the working dirs' tmpfs and /proc."""
    try:
        kernel.mount_setattr_recursive("/", kernel.MOUNT_ATTR_RDONLY | kernel.MOUNT_ATTR_NOSUID)
        report.filesystem = "read-only"
    except OSError as exc:
        report.fail("filesystem", f"could not make the root read-only: {exc.strerror}")
    try:
        mount_tmpfs(workdir_root, f"size={tmpfs_mb}m,nr_inodes=65536,mode=0755", kernel.MS_NOEXEC)
        report.private_tmp = True
        report.workdir_root = workdir_root
    except OSError as exc:
        report.fail("private_tmp", f"no private /tmp: {exc.strerror}")
    if report.root:
        _mount_proc(report)
    else:
        report.proc_hidepid = True  # /proc is an empty directory here
        if _proc_fd is None:
            report.notes.append("the real /proc could not be opened: strays cannot be swept")


def _private_root() -> str:
    """Where the private tmpfs for working directories is mounted: over `/tmp` (hiding the host's
    /tmp), or, when the code itself lives under /tmp, on a fresh empty directory there (then
    /tmp stays visible, read-only). Created before / becomes read-only; the host removes it."""
    if not code_lives_under("/tmp"):
        return "/tmp"
    root = f"/tmp/kpdd-sandbox-root-{os.getpid()}"
    os.makedirs(root, mode=0o755, exist_ok=True)
    return root


def _setup_host_tree(report: IsolationReport, tmpfs_mb: int) -> None:
    """Without a minimal root: the host's tree, read-only, with /tmp, /run and /proc covered."""
    try:
        private_root = _private_root()
        if private_root != "/tmp":
            report.host_dir = private_root
    except OSError as exc:
        report.fail("private_tmp", f"no private work root: {exc.strerror}")
        private_root = None
    try:
        kernel.mount_setattr_recursive("/", kernel.MOUNT_ATTR_RDONLY | kernel.MOUNT_ATTR_NOSUID)
        report.filesystem = "read-only"
    except OSError as exc:
        report.fail(
            "filesystem",
            f"could not remount / read-only ({exc.strerror}); world-writable dirs are covered "
            "by empty read-only tmpfs, other writes are stopped only by file permissions",
        )
        for path in _WORLD_WRITABLE:
            if os.path.isdir(path) and not os.path.islink(path):
                try:
                    mount_tmpfs(path, "size=4k,mode=0755", kernel.MS_RDONLY)
                except OSError as err:
                    report.notes.append(f"{path} stays writable ({err.strerror})")
        report.filesystem = "tmpfs-overlays"
    if private_root is not None:
        try:
            mount_tmpfs(private_root, f"size={tmpfs_mb}m,nr_inodes=65536,mode=0755", kernel.MS_NOEXEC)
            report.private_tmp = True
            report.workdir_root = private_root
        except OSError as exc:
            report.fail(
                "private_tmp", f"no private /tmp ({exc.strerror}): working dirs live in the host's /tmp"
            )
    if os.path.isdir("/run") and not os.path.islink("/run"):
        try:
            mount_tmpfs("/run", "size=4k,mode=0755", kernel.MS_RDONLY | kernel.MS_NOEXEC)
        except OSError as exc:
            report.notes.append(f"/run not hidden ({exc.strerror}): host unix sockets there stay visible")
    if report.root:
        _mount_proc(report)
    else:
        _hide_proc(report)


def _setup_mounts(report: IsolationReport, tmpfs_mb: int) -> None:
    try:
        kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    except OSError as exc:
        why = f"mounts not private: {exc.strerror}"
        for layer in ("filesystem", "host_files", "proc", "private_tmp"):
            report.fail(layer, why)
        return
    if not report.root:
        _keep_proc_fd()
    workdir_root = _enter_minimal_root(report)
    if workdir_root is not None:
        _setup_minimal_root(report, tmpfs_mb, workdir_root)
    else:
        _setup_host_tree(report, tmpfs_mb)


_proc_fd: int | None = None


def proc_dir_fd() -> int | None:
    """An fd of the real /proc when programs cannot see it (user-namespace mode), else None."""
    return _proc_fd


def _keep_proc_fd() -> None:
    # Without a PID namespace a new proc instance cannot be mounted, so programs get an empty
    # /proc; the server keeps a descriptor of the real one for its own sweeps.
    global _proc_fd
    with contextlib.suppress(OSError):
        _proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _hide_proc(report: IsolationReport) -> None:
    global _proc_fd
    if _proc_fd is None:
        report.fail("proc", "/proc not hidden: the real one cannot be opened")
        return
    try:
        mount_tmpfs("/proc", "size=4k,mode=0555", kernel.MS_RDONLY | kernel.MS_NOEXEC)
    except OSError as exc:
        os.close(_proc_fd)
        _proc_fd = None
        report.fail("proc", f"/proc not hidden ({exc.strerror}): programs can read the worker's /proc")
        return
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
            why = f"no namespaces as root: {exc.strerror}"
            for layer in ("network", "filesystem", "host_files", "proc", "private_tmp"):
                report.fail(layer, why)
            mounts = False
        if _identity_uid_map():
            report.per_program_uid = True
            report.uid_base = UID_BASE + (os.getpid() % (1 << 22)) * UID_BLOCK
        else:
            report.fail("per_program_uid", "the uid map is not the identity: programs share uid 65534")
    else:
        report.fail("root", f"the fork-server runs as uid {os.geteuid()}")
        mounts = _enter_user_namespace(report)
        report.fail(
            "per_program_uid", "not root: programs run under the server's uid; process limits are approximate"
        )
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
        report.fail("seccomp", f"no seccomp filter: {exc.strerror}")
    return report
