"""The sandbox's minimal root: a small tmpfs holding read-only binds of the system directories,
a few /etc files, device nodes, the interpreter's prefixes and import paths and the project's
`services` package, and nothing else of the host; the fork-server switches into it
(`pivot_root`, or `chroot` where that is denied). Built by `isolation.setup_isolation`."""

from __future__ import annotations

import contextlib
import os
import stat
import sys

from services.validation.sandbox import kernel

# The minimal root: where its tmpfs is mounted before the switch (in the server's own mount
# namespace only; any directory that never holds code will do, and /sys exists everywhere), and
# what of the host it shows.
NEW_ROOT_AT = "/sys"
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = (
    "passwd", "group", "nsswitch.conf", "host.conf", "hosts", "localtime", "timezone", "ld.so.cache",
    "ld.so.conf", "ld.so.conf.d", "mime.types", "os-release", "protocols", "services",
)  # fmt: skip
_DEV_NODES = ("null", "zero", "full", "random", "urandom")
_DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
_EMPTY_DIRS = ("/tmp", "/proc", "/dev/shm", "/var/tmp", "/run")
_WORK_SUBDIR = "kpdd-sandbox-work"  # the working dirs' tmpfs, under /tmp when code lives in /tmp


def mount_tmpfs(target: str, options: str, flags: int) -> None:
    kernel.mount("kpdd-sandbox", target, "tmpfs", flags | kernel.MS_NOSUID | kernel.MS_NODEV, options)


def _package_dirs() -> tuple[str, str]:
    """(the folder holding `services/`, the `services` package itself)."""
    services = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.dirname(services), services


def _code_paths() -> list[str]:
    """Where the interpreter, its packages and this project's code live (absolute, existing)."""
    package_root, services = _package_dirs()
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, services}
    paths.update(p for p in sys.path if p and os.path.isabs(p))
    found: set[str] = set()
    for path in paths:
        for candidate in {os.path.abspath(path), os.path.realpath(path)}:
            if candidate == "/" or not os.path.exists(candidate):
                continue
            # The project's own root (a checkout, with its .env and data) shows only `services`.
            own_root = candidate in (package_root, os.path.realpath(package_root))
            found.add(services if own_root else candidate)
    return sorted(found)


def code_lives_under(root: str) -> bool:
    """Whether the interpreter, its packages, this project or the working directory are under
    `root`: a tmpfs mounted over it would hide them from programs (lazy imports would fail)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.getcwd(), os.path.dirname(__file__)}
    paths.update(p for p in sys.path if p)
    prefix = os.path.realpath(root).rstrip("/") + "/"
    return any(os.path.realpath(p).startswith(prefix) for p in paths)


# --- the minimal root -------------------------------------------------------------------------


class _RootBuilder:
    """Populates the new root's tmpfs: mirrored directories, read-only binds, links."""

    def __init__(self, new_root: str, as_root: bool) -> None:
        self.new_root = new_root
        self.as_root = as_root
        self.made: set[str] = {"/"}  # paths (as programs will see them) that are our own dirs
        self.bound: list[str] = []  # bind targets, as programs will see them

    def _inside(self, path: str) -> str:
        return self.new_root + path

    def _covered(self, path: str) -> bool:
        return any(path == b or path.startswith(b.rstrip("/") + "/") for b in self.bound)

    def mkdirs(self, path: str) -> bool:
        """Create `path` and its parents as our own directories, each with the host's mode (and
        owner, as root); False if a parent is a link or a bind (never write through one)."""
        current = ""
        for part in path.strip("/").split("/"):
            current += "/" + part
            if current in self.made:
                continue
            target = self._inside(current)
            if os.path.lexists(target) or self._covered(current):
                return False
            os.mkdir(target, 0o755)
            with contextlib.suppress(OSError):
                st = os.stat(current)  # the host's directory of the same name, if any
                if stat.S_ISDIR(st.st_mode):
                    os.chmod(target, stat.S_IMODE(st.st_mode) & 0o1755)  # never writable by others
                    if self.as_root:
                        os.chown(target, st.st_uid, st.st_gid)
            self.made.add(current)
        return True

    def expose(self, path: str) -> None:
        """Bind the host's `path` (a directory or file) read-only at the same place; a link is
        copied as a link. Skipped if already visible through an earlier bind."""
        if self._covered(path) or not os.path.lexists(path):
            return
        parent = os.path.dirname(path)
        if not self.mkdirs(parent):
            return
        target = self._inside(path)
        if os.path.lexists(target):
            return
        if os.path.islink(path):
            os.symlink(os.readlink(path), target)
            return
        if os.path.isdir(path):
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        kernel.mount(path, target, None, kernel.MS_BIND | kernel.MS_REC)
        self.bound.append(path)

    def link(self, path: str, points_to: str) -> None:
        if self.mkdirs(os.path.dirname(path)) and not os.path.lexists(self._inside(path)):
            os.symlink(points_to, self._inside(path))


def build_root(new_root: str, as_root: bool) -> str:
    """Fill the new root; returns where the working directories' tmpfs goes."""
    builder = _RootBuilder(new_root, as_root)
    for path in _SYSTEM_PATHS:
        builder.expose(path)
    for name in _ETC_FILES:
        builder.expose(f"/etc/{name}")
    builder.mkdirs("/etc")
    for name in _DEV_NODES:
        builder.expose(f"/dev/{name}")
    for name, points_to in _DEV_LINKS.items():
        builder.link(f"/dev/{name}", points_to)
    code = _code_paths()
    for path in code:
        builder.expose(path)
    for path in _EMPTY_DIRS:
        builder.mkdirs(path)
    os.chmod(builder._inside("/tmp"), 0o755)  # nobody writes there: the work tmpfs covers it
    if any(p == "/tmp" or p.startswith("/tmp/") for p in code):
        # The code is under /tmp, so /tmp shows it (read-only) and the working dirs go below.
        workdir_root = f"/tmp/{_WORK_SUBDIR}"
        builder.mkdirs(workdir_root)
        return workdir_root
    return "/tmp"


def switch_root(new_root: str) -> str:
    """Make `new_root` this process's root; returns how ("pivot_root" or "chroot"). Raises
    `OSError` if neither is allowed (nothing has changed then)."""
    os.chdir(new_root)
    try:
        kernel.pivot_root(".", ".")  # the old root now sits on top of the new one, at "/"
    except OSError as pivot_error:
        # Docker's default seccomp profile denies pivot_root (it allows chroot with
        # CAP_SYS_CHROOT). The host's tree stays mounted underneath, out of reach for processes
        # without CAP_SYS_CHROOT and without a descriptor into it: programs have neither.
        try:
            os.chroot(".")
        except OSError as chroot_error:
            os.chdir("/")
            raise OSError(
                chroot_error.errno,
                f"pivot_root: {os.strerror(pivot_error.errno or 0)}; chroot: {chroot_error.strerror}",
            ) from None
        os.chdir("/")
        return "chroot"
    try:
        kernel.umount2(".", kernel.MNT_DETACH)  # the old root: gone from this namespace
    except OSError as exc:
        # The host's whole tree would stay reachable at "/": never serve programs like that.
        raise SystemExit(f"kpdd sandbox: could not detach the host's root after pivot_root: {exc}") from None
    os.chdir("/")
    return "pivot_root"
