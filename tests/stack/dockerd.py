"""The Docker engine and Compose for the stack test: uses the running engine (DOCKER_HOST or the
default socket) or starts a private `dockerd` with its own socket, data root and exec root, and
stops what it started. Fails loudly, with the engine's last log lines, when none can start.

Docker's engine comes from Debian's `docker.io` and Compose from `docker-compose` (scripts/setup.sh
installs both); the test runs as root, as dockerd needs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRIVATE_SOCKET = Path("/run/kpdd-stack/docker.sock")
PRIVATE_DATA_ROOT = Path(os.environ.get("KPDD_STACK_DOCKER_ROOT", "/var/lib/kpdd-stack/docker"))
FIX = "install docker.io, docker-compose and debootstrap (scripts/setup.sh does) and run as root"


def _engine_answers(host: str) -> bool:
    try:
        done = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            check=False,
            env={**os.environ, "DOCKER_HOST": host},
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@contextlib.contextmanager
def exclusive(lock_path: Path, timeout: float = 1200) -> Iterator[None]:
    """One stack test at a time on a machine: they share the engine, image tags and caches."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"another stack test held {lock_path} for {timeout} s") from None
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def docker_engine(log_path: Path) -> Iterator[str]:
    """Yields a DOCKER_HOST whose engine answers; stops the engine afterwards if it started it."""
    for tool in ("docker", "dockerd", "docker-compose", "debootstrap"):
        if shutil.which(tool) is None:
            raise AssertionError(f"{tool} not found: {FIX}")
    if os.geteuid() != 0:
        raise AssertionError(f"the stack test starts dockerd and debootstraps images: {FIX}")
    for host in (os.environ.get("DOCKER_HOST"), "unix:///var/run/docker.sock", f"unix://{PRIVATE_SOCKET}"):
        if host and _engine_answers(host):
            yield host
            return
    host = f"unix://{PRIVATE_SOCKET}"
    run_dir = PRIVATE_SOCKET.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    PRIVATE_DATA_ROOT.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                "dockerd",
                f"--host={host}",
                f"--data-root={PRIVATE_DATA_ROOT}",
                f"--exec-root={run_dir / 'exec'}",
                f"--pidfile={run_dir / 'dockerd.pid'}",
                # Every test container is on the host network: no bridge, no iptables rules.
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while not _engine_answers(host):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise AssertionError(
                    f"dockerd did not start ({FIX}); its log {log_path} ends:\n" + "\n".join(tail)
                )
            time.sleep(0.5)
        yield host
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


class Compose:
    """`docker-compose` on docker-compose.yml + tests/stack/compose.test.yml, one project."""

    def __init__(self, project: str, env: dict[str, str]) -> None:
        self.project = project
        self.env = env
        self.files = [REPO / "docker-compose.yml", REPO / "tests" / "stack" / "compose.test.yml"]

    def argv(self, *args: str) -> list[str]:
        files = [arg for path in self.files for arg in ("-f", str(path))]
        return ["docker-compose", "--project-directory", str(REPO), "-p", self.project, *files, *args]

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        done = subprocess.run(
            self.argv(*args),
            check=False,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def docker(self, *args: str, timeout: float = 120, check: bool = True, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["docker", *args],
            check=False,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def containers(self, service: str) -> list[str]:
        return self.run("ps", "-q", service).split()

    def wait_healthy(self, services: Sequence[str], timeout: float = 240) -> None:
        """Until every container of `services` is healthy; fails at once when one exits."""
        deadline = time.monotonic() + timeout
        pending = list(services)
        while pending:
            service = pending[0]
            ids = self.containers(service)
            fields = "{{.State.Status}} {{.RestartCount}} {{.State.Health.Status}}"
            states = [self.docker("inspect", "--format", fields, cid).split() for cid in ids]
            if any(state[0] in ("exited", "dead", "restarting") or state[1] != "0" for state in states):
                raise AssertionError(f"{service} exited:\n{self.logs(service)[-4000:]}")
            if ids and all(state[2:] == ["healthy"] for state in states):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                logs = self.logs(service)[-4000:]
                raise AssertionError(f"{service} not healthy in {timeout} s: {states}\n{logs}")
            time.sleep(1)

    def logs(self, *services: str) -> str:
        return self.run("logs", "--no-color", *services, check=False, timeout=60)
