"""Sandbox modes: a worker fails closed without full isolation; development may opt out.

Isolation is taken away from a child process only, never from the test process, the way a
container does it: `setpriv` shrinks the child's capability bounding set (a container without
`cap_add: [SYS_ADMIN]`), and `restrict.py` installs a seccomp filter in the child denying the
calls a container profile denies (Docker's default denies pivot_root; without SYS_ADMIN, unshare).
The code under test runs unchanged in that child: `kpdd worker` itself, the worker runtime, or a
`Sandbox`. The suite runs as root, as the worker container does.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.config import Settings
from services.errors import ConfigError
from services.validation.sandbox import IsolationReport, IsolationUnavailable, SandboxError
from services.validation.sandbox.modes import strict_for

REPO = Path(__file__).resolve().parents[3]
PYTHON = sys.executable
NO_SYS_ADMIN = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]
UNREACHABLE = {
    # A worker's configuration; nothing listens there, and the sandbox check comes first.
    "KPDD_BROKER_URL": "redis://127.0.0.1:9/0",
    "KPDD_DATABASE_URL": "postgresql+psycopg://kpdd@127.0.0.1:9/kpdd",
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPDD_")}
    env.update(PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def _restricted(deny: str, *argv: str) -> list[str]:
    return [PYTHON, "-m", "tests.services.validation.restrict", "--deny", deny, "--", *argv]


def _run(argv: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _child_python(code: str, *, prefix: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `code` (which prints one JSON line last) in a restricted child; its parsed output."""
    done = _run([*prefix, PYTHON, "-c", textwrap.dedent(code)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"out": json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr}


# --- kpdd worker at start ---------------------------------------------------------------------


def test_worker_refuses_to_start_without_namespaces() -> None:
    """Root without CAP_SYS_ADMIN (a container without cap_add): exit 2 before Celery starts,
    one line naming what is missing, why, how to fix it, and the development escape hatch."""
    done = _run([*NO_SYS_ADMIN, PYTHON, "-m", "services.cli.main", "worker"], _env(**UNREACHABLE))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    message = lines[0]
    assert message.startswith("kpdd: error: the sandbox cannot isolate programs fully here")
    assert "no network namespace" in message and "unshare: Operation not permitted" in message
    assert "the worker's files are not hidden from programs" in message
    assert "cap_add: [SYS_ADMIN, SYS_CHROOT]" in message and "apparmor:unconfined" in message
    assert "KPDD_SANDBOX_MODE=permissive" in message
    assert "celery" not in done.stdout + done.stderr.lower().replace("kpdd: error", "")


def test_worker_refuses_where_a_seccomp_profile_denies_namespaces() -> None:
    """Same refusal when the capability is there but the container's seccomp profile says no."""
    done = _run(_restricted("unshare", PYTHON, "-m", "services.cli.main", "worker"), _env(**UNREACHABLE))
    assert done.returncode == 2, done.stderr
    assert "no network namespace" in done.stderr and "KPDD_SANDBOX_MODE=permissive" in done.stderr


def test_permissive_worker_starts_with_a_warning() -> None:
    """KPDD_SANDBOX_MODE=permissive: the same worker gets past the sandbox check, saying loudly
    what is missing (it then stops at the unreachable database, exit 1, before Celery)."""
    env = _env(**UNREACHABLE, KPDD_SANDBOX_MODE="permissive")
    done = _run([*NO_SYS_ADMIN, PYTHON, "-m", "services.cli.main", "worker"], env)
    assert done.returncode == 1, done.stderr
    assert "kpdd worker: WARNING: KPDD_SANDBOX_MODE=permissive" in done.stderr
    assert "WITHOUT full isolation" in done.stderr and "no network namespace" in done.stderr
    assert "never with real provider keys" in done.stderr
    assert "cannot connect to the database" in done.stderr  # it went on


def test_training_only_worker_does_not_need_the_sandbox() -> None:
    done = _run(
        [*NO_SYS_ADMIN, PYTHON, "-m", "services.cli.main", "worker", "--queues", "training"],
        _env(**UNREACHABLE),
    )
    assert done.returncode == 1 and "cannot connect to the database" in done.stderr, done.stderr
    assert "sandbox" not in done.stderr


# --- in the worker process, when its sandbox starts --------------------------------------------

WORKER_PROCESS = """
    import json, logging
    logging.basicConfig(level=logging.WARNING)
    from services.config import get_settings
    from services.validation.sandbox import IsolationUnavailable
    from workers.runtime import WorkerRuntime

    runtime = WorkerRuntime.from_settings(get_settings())
    try:
        sandbox = runtime.generator.sandbox()
    except IsolationUnavailable as exc:
        out = {"refused": str(exc)}
    else:
        out = {"full": sandbox.isolation.full, "answer": sandbox.run("ans = 6 * 7").answer.value}
    runtime.close()
    print(json.dumps(out))
"""


def test_worker_process_refuses_when_its_sandbox_starts(tmp_path: Path) -> None:
    """The worker runtime's sandbox is strict too (a worker started by `celery` directly skips
    the `kpdd worker` check): the first program finds it refusing, with the same message."""
    env = _env(KPDD_DATABASE_URL=f"sqlite:///{tmp_path / 'w.sqlite3'}")
    result = _child_python(WORKER_PROCESS, prefix=NO_SYS_ADMIN, env=env)["out"]
    assert "cannot isolate programs fully" in result["refused"]
    assert "KPDD_SANDBOX_MODE=permissive" in result["refused"]


def test_permissive_worker_process_runs_programs_and_warns(tmp_path: Path) -> None:
    env = _env(KPDD_DATABASE_URL=f"sqlite:///{tmp_path / 'w.sqlite3'}", KPDD_SANDBOX_MODE="permissive")
    child = _child_python(WORKER_PROCESS, prefix=NO_SYS_ADMIN, env=env)
    assert child["out"] == {"full": False, "answer": "42"}
    assert "partial isolation (KPDD_SANDBOX_MODE=permissive)" in child["stderr"]


def test_worker_process_with_full_isolation_runs_programs(tmp_path: Path) -> None:
    env = _env(KPDD_DATABASE_URL=f"sqlite:///{tmp_path / 'w.sqlite3'}")
    child = _child_python(WORKER_PROCESS, prefix=[], env=env)
    assert child["out"] == {"full": True, "answer": "42"}
    assert "partial isolation" not in child["stderr"]


# --- embedded runs: best available, unless strict is asked ----------------------------------------

EMBEDDED = """
    import json, logging
    logging.basicConfig(level=logging.WARNING)
    from services.validation.sandbox import IsolationUnavailable, Sandbox
    try:
        with Sandbox(parallelism=1, scientific=False) as sandbox:
            out = {"strict": sandbox.strict, "full": sandbox.isolation.full,
                   "answer": sandbox.run("ans = 6 * 7").answer.value}
    except IsolationUnavailable as exc:
        out = {"refused": str(exc)}
    print(json.dumps(out))
"""


def test_embedded_sandbox_keeps_the_best_available_isolation() -> None:
    """`kpdd validate`, `probe`, the demo: no refusal without namespaces, a warning instead."""
    child = _child_python(EMBEDDED, prefix=NO_SYS_ADMIN, env=_env())
    assert child["out"] == {"strict": False, "full": False, "answer": "42"}
    assert "runs with partial isolation: no network namespace" in child["stderr"]


def test_embedded_sandbox_is_strict_when_asked() -> None:
    child = _child_python(EMBEDDED, prefix=NO_SYS_ADMIN, env=_env(KPDD_SANDBOX_MODE="strict"))
    assert "cannot isolate programs fully" in child["out"]["refused"]


# --- what a container gives: Docker's profile, the compose file ------------------------------------


def _compose_worker() -> dict[str, Any]:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    return dict(services["worker"])


def test_compose_gives_the_worker_what_strict_mode_needs() -> None:
    """The worker service of docker-compose.yml: root, every capability dropped but the
    sandbox's, AppArmor's mount ban lifted, Docker's default seccomp profile kept, an init."""
    worker = _compose_worker()
    assert worker["user"] in ("root", "0", "0:0")
    assert worker["cap_drop"] == ["ALL"]
    assert set(worker["cap_add"]) == {
        "SYS_ADMIN",
        "SYS_CHROOT",
        "SETUID",
        "SETGID",
        "CHOWN",
        "DAC_OVERRIDE",
        "KILL",
    }
    assert "apparmor=unconfined" in worker["security_opt"]
    assert "no-new-privileges:true" in worker["security_opt"]
    assert not any(opt.startswith("seccomp") for opt in worker["security_opt"])
    assert worker["init"] is True


ISOLATION_AND_PROBES = f"""
    import json
    from services.validation.sandbox import Sandbox, SandboxLimits
    limits = SandboxLimits(timeout_s=5, max_processes=4)
    with Sandbox(limits, parallelism=2, scientific=False, strict=True) as sandbox:
        report = sandbox.isolation.as_dict()
        runs = sandbox.run_many([
            "import os\\nans = sorted(os.listdir('/'))",
            "import os\\nans = sorted(os.listdir({str(REPO)!r}))",
            "import os\\nans = sorted(p for p in os.listdir('/proc') if p.isdigit()) == [str(os.getpid())]",
            "while True:\\n    pass",
            "import os\\nif os.fork() == 0:\\n    os.setsid()\\n    import time; time.sleep(60)\\nans = 1",
            "open('/etc/kpdd-canary', 'w')",
        ], timeout_s=1)
    runs = [[r.kind.value, r.answer and r.answer.value] for r in runs]
    print(json.dumps({{"report": report, "runs": runs}}))
"""


def test_the_compose_capabilities_and_dockers_seccomp_profile_give_full_isolation() -> None:
    """Exactly the capabilities the compose file adds, and pivot_root denied as Docker's default
    profile does: the sandbox enters its minimal root by chroot and every layer holds."""
    caps = ",".join("+" + cap.lower() for cap in _compose_worker()["cap_add"])
    prefix = ["setpriv", f"--bounding-set=-all,{caps}", *_restricted("pivot_root")]
    result = _child_python(ISOLATION_AND_PROBES, prefix=prefix, env=_env())["out"]
    report = IsolationReport.from_dict(result["report"])
    assert report.full, report
    assert report.root_switch == "chroot"
    listing, checkout, alone, loop, forked, write = result["runs"]
    code_tops = {Path(p).parts[1] for p in (sys.prefix, sys.base_prefix, str(REPO))}
    system = {
        "bin",
        "dev",
        "etc",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "proc",
        "run",
        "sbin",
        "tmp",
        "usr",
        "var",
    }
    assert listing[0] == "ok" and set(ast.literal_eval(listing[1])) <= system | code_tops, listing
    assert checkout[0] == "ok" and set(ast.literal_eval(checkout[1])) <= {"services", ".venv"}, (
        checkout
    )  # no .env, no data
    assert alone == ["ok", "True"]
    assert loop[0] == "timeout" and forked == ["ok", "1"]
    assert write[0] == "error"


def test_without_chroot_the_host_files_stay_visible_and_strict_refuses() -> None:
    prefix = _restricted("pivot_root,chroot")
    child = _child_python(EMBEDDED, prefix=prefix, env=_env(KPDD_SANDBOX_MODE="strict"))
    refused = child["out"]["refused"]
    assert "the worker's files are not hidden from programs" in refused
    assert "pivot_root: Operation not permitted; chroot: Operation not permitted" in refused
    assert "SYS_CHROOT" in refused


# --- pure data ------------------------------------------------------------------------------------


def test_modes_and_the_setting() -> None:
    assert strict_for("auto", worker=True) and not strict_for("auto", worker=False)
    assert strict_for("strict", worker=False) and not strict_for("permissive", worker=True)
    assert Settings().sandbox_mode == "auto"
    assert Settings(sandbox_mode="permissive").sandbox_strict(worker=True) is False
    with pytest.raises(ValueError):
        Settings(sandbox_mode="off")  # type: ignore[arg-type]
    assert issubclass(IsolationUnavailable, ConfigError) and issubclass(IsolationUnavailable, SandboxError)
    assert IsolationUnavailable("x").exit_code == 2


def test_report_names_what_is_missing_once_per_cause() -> None:
    report = IsolationReport(root=True, per_program_uid=True, seccomp=True)
    for layer in ("network", "filesystem", "host_files", "proc", "private_tmp"):
        report.fail(layer, "no namespaces as root: unshare: Operation not permitted")
    assert report.missing() == [
        "no network namespace, the filesystem is not read-only, the worker's files are not hidden "
        "from programs, programs can see other processes in /proc, no private /tmp "
        "(no namespaces as root: unshare: Operation not permitted)"
    ]
    assert "cap_add: [SYS_ADMIN, SYS_CHROOT]" in report.remedy()
    remapped = IsolationReport(
        root=True, network="netns", filesystem="read-only", host_files_hidden=True, proc_hidepid=True,
        private_tmp=True, seccomp=True,
    )  # fmt: skip
    remapped.fail("per_program_uid", "the uid map is not the identity: programs share uid 65534")
    assert remapped.missing() == [
        "programs share one uid (the uid map is not the identity: programs share uid 65534)"
    ]
    assert "userns_mode: host" in remapped.remedy()
