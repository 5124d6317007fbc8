"""The sandbox's CPU accounting and what its cheaper fork must not change.

Children's CPU comes from the fork-server's `wait4` (per result, `cpu_ms`; per server,
`Sandbox.cpu_usage()`). The fork-server forks without CPython's after-fork hooks
(`kernel.fork_without_handlers`), so these tests also pin what those hooks did that programs can
observe: a fresh `random` state per program, a consistent `threading` module, a working `os.fork`
inside a program allowed more than one process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.validation.sandbox import ExecutionKind, Sandbox, SandboxLimits, ServerCpu

LIMITS = SandboxLimits(timeout_s=5, memory_mb=256)
BURN = "import time\nend = time.process_time() + 0.2\nwhile time.process_time() < end:\n    pass\nans = 1\n"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(LIMITS, parallelism=2, strict=True, scientific=False) as sb:
        yield sb


REPO = Path(__file__).resolve().parents[3]


def test_each_result_carries_its_process_cpu(sandbox: Sandbox) -> None:
    quick, burner = sandbox.run_many(["ans = 1", BURN])
    assert quick.kind is ExecutionKind.OK and burner.kind is ExecutionKind.OK, (quick, burner)
    assert quick.cpu_ms is not None and 0 < quick.cpu_ms < 100
    assert burner.cpu_ms is not None and burner.cpu_ms >= 200  # it burnt 0.2 s of its own CPU
    assert burner.cpu_ms <= burner.duration_s * 1000 + 20  # one thread: no more CPU than wall clock
    assert burner.as_dict()["cpu_ms"] == burner.cpu_ms


def test_a_program_that_is_not_run_has_no_cpu(sandbox: Sandbox) -> None:
    result = sandbox.run("x = 1\n" * 20, limits=LIMITS.with_overrides(max_program_bytes=10))
    assert result.error_type == "ProgramTooLarge" and result.cpu_ms is None


def test_cpu_usage_counts_programs_and_their_cpu(sandbox: Sandbox) -> None:
    before = sandbox.cpu_usage()
    assert set(before) == {"basic"} and isinstance(before["basic"], ServerCpu)
    results = sandbox.run_many([BURN, "ans = 2", "ans = 3"])
    after = sandbox.cpu_usage()["basic"]
    assert after.programs - before["basic"].programs == 3
    children_ms = (after.children_s - before["basic"].children_s) * 1000
    assert children_ms >= sum(r.cpu_ms or 0 for r in results) - 1  # per-result figures add up
    assert children_ms >= 200
    assert after.server_s >= before["basic"].server_s > 0


def test_each_program_gets_a_fresh_random_state(sandbox: Sandbox) -> None:
    results = sandbox.run_many(["import random\nans = random.getrandbits(64)\n"] * 6)
    values = [r.answer.value for r in results if r.answer is not None]
    assert len(values) == 6 and len(set(values)) == 6, values


def test_threading_and_fork_work_inside_a_program(sandbox: Sandbox) -> None:
    program = (
        "import os, threading\n"
        "box = []\n"
        "t = threading.Thread(target=lambda: box.append(threading.current_thread().name))\n"
        "t.start(); t.join()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n    os._exit(7)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "ans = [threading.current_thread() is threading.main_thread(), box[0] != 'MainThread',\n"
        "       threading.active_count(), os.waitstatus_to_exitcode(status)]\n"
    )
    result = sandbox.run(program, limits=LIMITS.with_overrides(max_processes=4))
    assert result.kind is ExecutionKind.OK, result
    assert result.answer is not None and result.answer.value == "[True, True, 1, 7]"


def test_fork_without_handlers_skips_the_hooks() -> None:
    # In a fresh interpreter: this test process has other threads by now (lease keepers...).
    script = """
import os, threading
from services.validation.sandbox import kernel
calls = []
os.register_at_fork(after_in_child=lambda: calls.append(1))  # would make the child exit 3
assert threading.active_count() == 1
pid = kernel.fork_without_handlers()
if pid == 0:
    os._exit(3 if calls else 0)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
