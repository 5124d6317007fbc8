"""The PoT sandbox against hostile programs: every case asserts the verdict AND that the host is
untouched (no file created, no process left behind, the fork-servers alive and still serving).

The suite runs as root, as the worker container does; the main fixture is `strict`, so a machine
where an isolation layer does not hold fails loudly here instead of testing a weaker sandbox.
The non-root fallback is tested separately through `run_as_uid`.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.validation.numbers import parse_number
from services.validation.sandbox import (
    Answer,
    ExecutionKind,
    ExecutionResult,
    Sandbox,
    SandboxError,
    SandboxLimits,
)
from services.validation.sandbox.child import SETUP_FAILED_STATUS, ChildSpec, run_child
from services.validation.sandbox.results import result_from_reply

REPO_ROOT = Path(__file__).resolve().parents[3]
TOKEN = secrets.token_hex(6)
SECRET = f"kpdd-secret-{secrets.token_hex(12)}"
CANARIES = [
    Path(f"/tmp/kpdd-canary-{TOKEN}"),
    REPO_ROOT / f"kpdd-canary-{TOKEN}",
    Path(f"/dev/shm/kpdd-canary-{TOKEN}"),
    Path(f"/var/tmp/kpdd-canary-{TOKEN}"),
]
FAST = SandboxLimits(timeout_s=0.6, memory_mb=128)
# Writing to /tmp is refused either way: EACCES on the private tmpfs over /tmp, or EROFS when the
# code itself lives under /tmp and /tmp stays visible, read-only (a checkout or venv in /tmp).
TMP_WRITE_ERROR = (
    "OSError" if str(REPO_ROOT).startswith("/tmp/") or sys.prefix.startswith("/tmp/") else ("PermissionError")
)

OK, ERROR, TIMEOUT, MEMORY = (
    ExecutionKind.OK,
    ExecutionKind.ERROR,
    ExecutionKind.TIMEOUT,
    ExecutionKind.MEMORY,
)
OUTPUT_CAP, SIGNAL, NO_ANSWER = ExecutionKind.OUTPUT_CAP, ExecutionKind.SIGNAL, ExecutionKind.NO_ANSWER


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    # A secret in the worker's environment before the servers start: it must never reach them.
    os.environ["KPDD_SANDBOX_TEST_SECRET"] = SECRET
    try:
        with Sandbox(FAST, parallelism=2, strict=True) as sb:
            yield sb
    finally:
        os.environ.pop("KPDD_SANDBOX_TEST_SECRET", None)


# --- the host-untouched check ---------------------------------------------------------------


def _status_field(pid: str, name: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return None


def _leftover_processes(sandbox: Sandbox) -> list[str]:
    """Processes of the programs' uids, and any child of a fork-server (zombie or alive)."""
    uids = sandbox.uid_ranges()
    servers = set(sandbox.server_pids.values())
    left = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        uid, ppid = _status_field(pid, "Uid"), _status_field(pid, "PPid")
        if (uid is not None and any(uid in r for r in uids)) or ppid in servers:
            left.append(pid)
    return left


@dataclass
class HostState:
    server_pids: dict[str, int]
    extra_files: list[Path] = field(default_factory=list)


def snapshot(sandbox: Sandbox, *extra_files: Path) -> HostState:
    return HostState(dict(sandbox.server_pids), list(extra_files))


def assert_host_untouched(sandbox: Sandbox, before: HostState) -> None:
    for path in [*CANARIES, *before.extra_files]:
        assert not path.exists(), f"the program created {path}"
    assert sandbox.server_pids == before.server_pids, "a fork-server was replaced"
    for pid in before.server_pids.values():
        os.kill(pid, 0)  # raises if the server died
    # Nothing may survive the program; give the kernel a moment to finish killing, no more.
    deadline = time.monotonic() + 2.0
    while (left := _leftover_processes(sandbox)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not left, f"processes left behind: {left}"
    root = sandbox.isolation.workdir_root  # /tmp, or a fresh dir when the code lives under /tmp
    for pid in before.server_pids.values():
        private_tmp = Path(f"/proc/{pid}/root{root}")
        assert list(private_tmp.iterdir()) == [], "a working directory was not removed"
    still = sandbox.run("ans = 6 * 7", timeout_s=5)
    assert still.kind is OK and still.answer == Answer("int", "42"), still
    assert sandbox.server_pids == before.server_pids


def run_checked(sandbox: Sandbox, program: str, **overrides: Any) -> ExecutionResult:
    before = snapshot(sandbox)
    limits = FAST.with_overrides(**overrides)
    result = sandbox.run(program, limits=limits)
    assert_host_untouched(sandbox, before)
    return result


# --- adversarial programs -------------------------------------------------------------------

C = CANARIES[0]
R = CANARIES[1]


@dataclass(frozen=True)
class Case:
    id: str
    program: str
    kinds: tuple[ExecutionKind, ...]
    error_type: str | None = None
    answer: str | None = None
    limits: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("infinite_loop", "while True:\n    pass\n", (TIMEOUT,)),
    Case(
        "loop_catching_baseexception",
        "while True:\n    try:\n        while True:\n            pass\n"
        "    except BaseException:\n        pass\n",
        (TIMEOUT,),
    ),
    Case(
        "ignored_and_blocked_signals",
        "import signal\n"
        "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU, signal.SIGALRM):\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})\n"
        "while True:\n    pass\n",
        (TIMEOUT,),
    ),
    Case("sleep_not_cpu", "import time\ntime.sleep(60)\n", (TIMEOUT,)),
    Case("stops_itself", "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)\nans = 1\n", (TIMEOUT,)),
    Case("fork_bomb", "import os\nwhile True:\n    os.fork()\n", (ERROR,), "BlockingIOError"),
    Case(
        "os_system",
        f"import os\nans = os.system('touch {C} {R}')\n",
        (OK,),
        answer="32512",  # 127 << 8: glibc's status when the shell cannot even be spawned
    ),
    Case("subprocess", f"import subprocess\nsubprocess.run(['touch', '{C}'])\n", (ERROR,), "BlockingIOError"),
    Case(
        "exec_a_shell",
        f"import os\nos.execv('/bin/sh', ['sh', '-c', 'echo pwned > {R}; echo pwned > {C}'])\n",
        (ERROR,),
        "Exit",
    ),
    Case(
        "import_filter_bypass_dunder_import",
        f"m = __import__('o' + 's')\nfd = m.open('{C}', m.O_CREAT | m.O_WRONLY)\n",
        (ERROR,),
        TMP_WRITE_ERROR,
    ),
    Case(
        "import_filter_bypass_subclasses",
        "wrap = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0]\n"
        f"system = wrap.__init__.__globals__['system']\nans = system('touch {R}')\n",
        (OK,),
        answer="32512",
    ),
    Case(
        "import_filter_bypass_importlib_and_builtins",
        "import importlib, builtins\n"
        "shutil = importlib.import_module('shutil')\n"
        f"builtins.__dict__['open']('{R}', 'w')\n",
        (ERROR,),
        "OSError",  # EROFS: the whole tree is read-only to programs
    ),
    Case("ctypes_null_deref", "import ctypes\nctypes.string_at(0)\n", (SIGNAL,), "SIGSEGV"),
    Case("ctypes_libc_fork", "import ctypes\nans = ctypes.CDLL(None).fork()\n", (OK,), answer="-1"),
    Case(
        "ctypes_unshare_user_namespace",
        "import ctypes\nans = ctypes.CDLL(None).unshare(0x10000000)\n",
        (OK,),
        answer="-1",
    ),
    Case(
        "ctypes_raw_socket_syscall",
        "import ctypes\nans = ctypes.CDLL(None).syscall(41, 2, 1, 0)\n",
        (OK,),
        answer="-1",
    ),
    Case("huge_allocation", "x = bytearray(10**11)\n", (MEMORY,), "MemoryError"),
    Case(
        "huge_numpy_allocation",
        "import numpy as np\nx = np.ones(10**10)\n",
        (MEMORY,),
        "numpy._core._exceptions._ArrayMemoryError",
    ),
    Case("growing_allocation", "x = []\nwhile True:\n    x.append(' ' * 10**6)\n", (MEMORY,), "MemoryError"),
    Case("deep_recursion", "def f(n):\n    return f(n + 1)\nf(0)\n", (ERROR,), "RecursionError"),
    Case(
        "recursion_limit_lifted",
        "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)\n",
        (TIMEOUT, MEMORY, SIGNAL),
    ),
    Case("giant_integer_answer", "ans = 10**5000\n", (ERROR,), "AnswerTooLarge"),
    Case("giant_integer_power", "x = 7 ** (10**9)\n", (TIMEOUT, MEMORY)),
    Case("giant_integer_to_text", "ans = str(10**100000)\n", (ERROR,), "ValueError"),
    Case("catastrophic_regex", "import re\nans = bool(re.match(r'(a+)+$', 'a' * 64 + 'b'))\n", (TIMEOUT,)),
    Case("huge_stdout", "while True:\n    print('x' * 1000)\n", (OUTPUT_CAP,)),
    Case("huge_stderr", "import sys\nwhile True:\n    sys.stderr.write('y' * 4096)\n", (OUTPUT_CAP,)),
    Case("write_into_the_repo", f"open('{R}', 'w').write('x')\n", (ERROR,), "OSError"),
    Case("write_into_tmp", f"open('{C}', 'w').write('x')\n", (ERROR,), TMP_WRITE_ERROR),
    Case("write_into_dev_shm", f"open('{CANARIES[2]}', 'w').write('x')\n", (ERROR,), "OSError"),
    Case("write_into_var_tmp", f"open('{CANARIES[3]}', 'w').write('x')\n", (ERROR,), "OSError"),
    Case(
        "symlink_out_of_workdir",
        f"import os\nos.symlink('{R}', 'link')\nopen('link', 'w').write('x')\n",
        (ERROR,),
        "OSError",
    ),
    Case(
        "file_over_size_limit",
        "f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * 65536)\n",
        (ERROR,),
        "OSError",  # EFBIG: Python ignores SIGXFSZ
        limits={"max_file_bytes": 1 << 20},
    ),
    Case(
        "tcp_connection",
        "import socket\nsocket.create_connection(('1.1.1.1', 53), 1)\n",
        (ERROR,),
        "PermissionError",
    ),
    Case(
        "kill_the_parent",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        (ERROR,),
        "PermissionError",
    ),
    Case("kill_everything", "import os, signal\nos.kill(-1, signal.SIGKILL)\nans = 'still here'\n", (OK,)),
    Case("kill_own_group", "import os, signal\nos.killpg(0, signal.SIGKILL)\n", (SIGNAL,), "SIGKILL"),
    Case("setuid_root", "import os\nos.setuid(0)\n", (ERROR,), "PermissionError"),
    Case(
        "lingering_thread",
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\nans = 1\n",
        (ERROR,),
        "RuntimeError",  # no thread may start under max_processes=1
    ),
    Case(
        "atexit_and_finalizers_never_run",
        "import atexit, time\n"
        f"atexit.register(lambda: open('{C}', 'w'))\natexit.register(time.sleep, 60)\n"
        "class Slow:\n    def __del__(self):\n        time.sleep(60)\nkeep = Slow()\nans = 7\n",
        (OK,),
        answer="7",
    ),
    Case("sys_exit_nonzero", "import sys\nsys.exit(3)\n", (ERROR,), "SystemExit"),
    Case("sys_exit_zero_keeps_answer", "import sys\nans = 5\nsys.exit(0)\n", (OK,), answer="5"),
    Case("os_exit_before_answer", "import os\nans = 5\nos._exit(0)\n", (NO_ANSWER,)),
    Case("input_reads_nothing", "x = input()\n", (ERROR,), "EOFError"),
    Case(
        "read_parent_memory",
        "import os\nopen(f'/proc/{os.getppid()}/mem', 'rb').read(16)\n",
        (ERROR,),
        "FileNotFoundError",  # hidepid: the server is not even visible
    ),
    Case(
        "process_vm_readv_the_parent",
        "import ctypes, os\nans = ctypes.CDLL(None).process_vm_readv(os.getppid(), 0, 0, 0, 0, 0)\n",
        (OK,),
        answer="-1",
    ),
    Case(
        "ptrace_the_parent",
        "import ctypes, os\nans = ctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0)\n",
        (OK,),
        answer="-1",
    ),
    Case(
        "only_itself_in_proc",
        "import os\nans = len([p for p in os.listdir('/proc') if p.isdigit()])\n",
        (OK,),
        answer="1",
    ),
    Case(
        "forged_report",
        'import os\nos.write(3, b\'{"kind": "timeout"}\')\nans = 1\n',
        (ERROR,),
        "ProtocolError",
    ),
    Case("report_flood", "import os\nwhile True:\n    os.write(3, b'x' * 65536)\n", (TIMEOUT,)),
    Case(
        "object_whose_str_never_returns",
        "class Evil:\n    def __str__(self):\n        while True:\n            pass\nans = Evil()\n",
        (TIMEOUT,),
    ),
    Case(
        "object_whose_str_raises",
        "class Evil:\n    def __str__(self):\n        raise KeyboardInterrupt\nans = Evil()\n",
        (ERROR,),
        "KeyboardInterrupt",
    ),
    Case("syntax_error", "ans = (\n", (ERROR,), "SyntaxError"),
    Case("null_bytes", "ans = 1\x00\n", (ERROR,), "SyntaxError"),
]


def test_there_are_at_least_thirty_adversarial_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_adversarial_program(sandbox: Sandbox, case: Case) -> None:
    result = run_checked(sandbox, case.program, **case.limits)
    assert result.kind in case.kinds, result
    if case.error_type is not None:
        assert result.error_type == case.error_type, result
    if case.answer is not None:
        assert result.answer is not None and result.answer.value == case.answer, result


def test_all_adversarial_programs_at_once(sandbox: Sandbox) -> None:
    """The same verdicts when the hostile programs run concurrently, two servers at once."""
    before = snapshot(sandbox)
    by_limits: dict[tuple[tuple[str, Any], ...], list[Case]] = {}
    for case in CASES:
        by_limits.setdefault(tuple(sorted(case.limits.items())), []).append(case)
    for overrides, cases in by_limits.items():
        results = sandbox.run_many([c.program for c in cases], limits=FAST.with_overrides(**dict(overrides)))
        for case, result in zip(cases, results, strict=True):
            assert result.kind in case.kinds, (case.id, result)
            if case.error_type is not None:
                assert result.error_type == case.error_type, (case.id, result)
    assert_host_untouched(sandbox, before)


def test_network_cannot_reach_a_host_listener(sandbox: Sandbox, tmp_path: Path) -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    tcp.setblocking(False)
    unix_path = tmp_path / "listener.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(unix_path))
    unix.listen()
    unix.setblocking(False)
    os.chmod(tmp_path, 0o777)
    os.chmod(unix_path, 0o777)
    port = tcp.getsockname()[1]
    program = (
        "import socket\nerrors = []\n"
        f"targets = ((socket.AF_INET, ('127.0.0.1', {port})), (socket.AF_UNIX, '{unix_path}'))\n"
        "for family, address in targets:\n"
        "    try:\n"
        "        s = socket.socket(family)\n"
        "        s.connect(address)\n"
        "        errors.append('connected')\n"
        "    except OSError as exc:\n"
        "        errors.append(type(exc).__name__)\n"
        "ans = ','.join(errors)\n"
    )
    try:
        result = run_checked(sandbox, program)
        assert result.kind is OK and result.answer == Answer("text", "PermissionError,PermissionError")
        for listener in (tcp, unix):
            with pytest.raises(BlockingIOError):
                listener.accept()
    finally:
        tcp.close()
        unix.close()


def test_no_secret_of_the_worker_reaches_a_program(sandbox: Sandbox) -> None:
    """The worker's environment holds SECRET; the program dumps its own environment, every
    /proc/*/environ and cmdline it can read, and every `kpdd-secret-...` in its own memory (which
    is a copy of the fork-server's)."""
    program = r"""
import os, re
found = [repr(dict(os.environ))]
for pid in os.listdir('/proc'):
    for name in ('environ', 'cmdline'):
        try:
            found.append(open(f'/proc/{pid}/{name}', 'rb').read().decode('latin-1'))
        except OSError:
            pass
needle = ('kpdd-' + 'secret-').encode()
pattern = re.escape(needle) + rb'[0-9a-f]{24}'
import ctypes
for line in open('/proc/self/maps'):
    fields = line.split()
    start, end = (int(x, 16) for x in fields[0].split('-'))
    special = line.rstrip().endswith(']') and '[heap]' not in line  # [vvar], [stack] guard...
    if not fields[1].startswith('r') or end - start > 64 << 20 or special:
        continue
    chunk = ctypes.string_at(start, end - start)
    found += [m.group(0).decode('latin-1') for m in re.finditer(pattern, chunk)]
ans = '\n'.join(found)
"""
    result = run_checked(sandbox, program, timeout_s=20, max_answer_chars=1 << 20, memory_mb=512)
    assert result.kind is OK, result
    assert result.answer is not None and "HOME" in result.answer.value
    assert SECRET not in result.answer.value
    assert "KPDD_SANDBOX_TEST_SECRET" not in result.answer.value


def test_no_state_leaks_from_one_program_to_the_next(sandbox: Sandbox) -> None:
    polluter = (
        "import builtins, math, os, sys, fractions\n"
        "builtins.leak = 42\nmath.pi = 3\nfractions.Fraction.__add__ = lambda a, b: 0\n"
        "os.environ['LEAK'] = '1'\nsys.modules['leak'] = sys\nsys.setrecursionlimit(50)\n"
        "open('left_behind.txt', 'w').write('x')\nans = os.getcwd()\n"
    )
    checker = (
        "import builtins, math, os, sys, fractions\n"
        "leaks = [name for name, bad in [\n"
        "    ('builtins', hasattr(builtins, 'leak')), ('math.pi', math.pi != 3.141592653589793),\n"
        "    ('fraction', fractions.Fraction(1, 2) + fractions.Fraction(1, 2) != 1),\n"
        "    ('environ', 'LEAK' in os.environ), ('modules', 'leak' in sys.modules),\n"
        "    ('recursion', sys.getrecursionlimit() == 50), ('cwd', os.listdir('.') != []),\n"
        "] if bad]\nans = ','.join(leaks) or 'clean'\n"
    )
    before = snapshot(sandbox)
    for _ in range(3):  # the same slot is reused: two slots, six programs
        first = sandbox.run(polluter)
        assert first.kind is OK, first
        second = sandbox.run(checker)
        assert second.answer == Answer("text", "clean"), second
        assert first.answer != second.answer
    assert_host_untouched(sandbox, before)


def test_stray_processes_are_swept_when_programs_may_fork(sandbox: Sandbox) -> None:
    """With threads and processes allowed, a stray that setsid()s and forks again still dies."""
    program = (
        "import os, time, threading\n"
        "threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    time.sleep(60)\n"
        "os.fork() or os._exit(0)  # a zombie nobody waits for\n"
        "ans = 'parent done'\n"
    )
    result = run_checked(sandbox, program, max_processes=8)
    assert result.kind is OK and result.answer == Answer("text", "parent done"), result
    bomb = run_checked(sandbox, "import os\nwhile True:\n    os.fork()\n", max_processes=8)
    assert bomb.kind is ERROR and bomb.error_type == "BlockingIOError", bomb
    hung = run_checked(sandbox, "import os\nos.fork(); os.fork()\nwhile True:\n    pass\n", max_processes=8)
    assert hung.kind is TIMEOUT, hung


@pytest.mark.parametrize(
    ("program", "answer"),
    [
        ("ans = 18", Answer("int", "18")),
        ("ans = -3 * 4", Answer("int", "-12")),
        ("from fractions import Fraction\nans = Fraction(10, -4)", Answer("fraction", "-5/2")),
        ("from fractions import Fraction\nans = Fraction(6, 3)", Answer("fraction", "2")),
        ("from decimal import Decimal\nans = Decimal('1.50')", Answer("decimal", "1.50")),
        ("ans = 0.1 + 0.2", Answer("float", "0.30000000000000004")),
        ("ans = 1e300 * 1e10", Answer("float", "inf")),
        ("ans = True", Answer("bool", "True")),
        ("ans = None", Answer("none", "")),
        ("ans = 'Tuesday'", Answer("text", "Tuesday")),
        ("ans = [1, 2]", Answer("text", "[1, 2]")),
        ("import numpy as np\nans = np.int64(7) * 6", Answer("int", "42")),
        ("import numpy as np\nans = np.float64(2.5)", Answer("float", "2.5")),
        ("import numpy as np\nans = np.bool_(False)", Answer("bool", "False")),
        ("import numpy as np\nans = np.array(9)", Answer("int", "9")),
        ("import sympy\nans = sympy.Rational(3, 6) + 1", Answer("fraction", "3/2")),
        ("import sympy\nans = sympy.Integer(12)", Answer("int", "12")),
        ("import sympy\nx = sympy.Symbol('x')\nans = sympy.solve(2 * x - 8, x)[0]", Answer("int", "4")),
        ("import sympy\nans = sympy.sqrt(2)", Answer("text", "sqrt(2)")),
        ("def solution():\n    return 6 * 7", Answer("int", "42")),
        ("ans = 1\ndef solution():\n    return 2", Answer("int", "1")),  # `ans` wins
        ("ans = 'x' * 5000", Answer("text", "x" * 1000, truncated=True)),
        # Lying objects: the child reads the real value, the host only ever sees plain text.
        (
            "class L(int):\n    def __eq__(s, o): return True\n    def __str__(s): return '999'\n"
            "    __repr__ = __str__\nans = L(5)",
            Answer("int", "5"),
        ),
        (
            "class F(float):\n    def __repr__(s): return '1.0'\nans = F(2.5)",
            Answer("float", "2.5"),
        ),
        (
            "class S(str):\n    def __eq__(s, o): return True\n"
            "    def __str__(s): return 'lie'\nans = S('truth')",
            Answer("text", "truth"),
        ),
        (
            "class Any:\n    def __eq__(s, o): return True\n    __hash__ = None\n"
            "    def __str__(s): return '72'\nans = Any()",
            Answer("text", "72"),
        ),
    ],
)
def test_answers_are_exact_plain_values(sandbox: Sandbox, program: str, answer: Answer) -> None:
    result = sandbox.run(program, timeout_s=10)
    assert result.kind is OK, result
    assert result.answer == answer
    assert type(result.answer.value) is str and result.answer.value != "never equal"


def test_numeric_answers_parse_with_the_gold_parser(sandbox: Sandbox) -> None:
    results = sandbox.run_many(
        [
            "ans = 72",
            "from fractions import Fraction\nans = Fraction(-5, 2)",
            "from decimal import Decimal\nans = Decimal('0.25')",
        ]
    )
    parsed = [parse_number(r.answer.value) for r in results if r.answer is not None]
    assert [str(p) for p in parsed] == ["72", "-5/2", "1/4"]


def test_no_answer_and_output_excerpt(sandbox: Sandbox) -> None:
    result = sandbox.run("import sys\nprint('hello')\nsys.stdout.buffer.write(b'\\xff\\xfe')\nx = 1\n")
    assert result.kind is NO_ANSWER
    assert "hello\n" in result.stdout and "\ufffd" in result.stdout
    assert result.output_bytes == 8 and not result.stdout_truncated
    long = sandbox.run("print('z' * 10000)\nans = 1", limits=FAST.with_overrides(stdout_excerpt_bytes=100))
    assert (
        long.kind is OK and long.stdout == "z" * 100 and long.stdout_truncated and long.output_bytes == 10001
    )


def test_results_come_back_in_input_order(sandbox: Sandbox) -> None:
    programs = [f"import time\ntime.sleep({(7 - i % 7) / 200})\nans = {i}" for i in range(30)]
    results = sandbox.run_many(programs)
    assert [r.answer.value if r.answer else None for r in results] == [str(i) for i in range(30)]


def test_the_servers_import_what_programs_use(sandbox: Sandbox) -> None:
    """numpy/sympy programs go to the server that pre-imported them; others to the lean one."""
    loaded = "import sys\nans = ','.join(m for m in MODULES if m in sys.modules)\n"
    modules = "MODULES = ('sym' + 'py', 'num' + 'py', 'fractions', 'statistics', 'decimal')\n"
    scientific = sandbox.run(modules + loaded + "# uses sympy")
    assert scientific.answer == Answer("text", "sympy,numpy,fractions,statistics,decimal")
    basic = sandbox.run(modules + loaded)
    assert basic.answer == Answer("text", "fractions,statistics,decimal")
    assert sandbox.route("import numpy as np") == "scientific" and sandbox.route("ans = 1") == "basic"
    numpy_threads = sandbox.run("import os\nans = os.environ.get('OPENBLAS_NUM_THREADS')  # numpy")
    assert numpy_threads.answer == Answer("text", "1")


def test_isolation_report_is_full_as_root(sandbox: Sandbox) -> None:
    report = sandbox.isolation
    assert report.full, report
    assert report.network == "netns" and report.filesystem == "read-only" and report.seccomp


def test_children_die_with_their_fork_server() -> None:
    """If the fork-server itself is killed, its running program dies with it (parent-death
    signal), the program's own setsid() child is killed by uid from the host, and the next call
    starts a fresh server."""
    program = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nwhile True:\n    pass\n"
    )
    with Sandbox(FAST.with_overrides(max_processes=4), parallelism=1, strict=True, scientific=False) as sb:
        old_pid = sb.server_pids["basic"]
        uids = sb.uid_ranges()
        errors: list[BaseException] = []

        def run_forever() -> None:
            try:
                sb.run(program, timeout_s=60)
            except BaseException as exc:  # the SandboxError is the expected outcome
                errors.append(exc)

        worker = threading.Thread(target=run_forever)
        worker.start()
        deadline = time.monotonic() + 10
        while not any(_status_field(p, "PPid") == old_pid for p in os.listdir("/proc") if p.isdigit()):
            assert time.monotonic() < deadline, "the program never started"
            time.sleep(0.01)
        os.kill(old_pid, signal.SIGKILL)
        worker.join(30)
        assert errors and isinstance(errors[0], SandboxError)
        deadline = time.monotonic() + 5
        while any(
            (u := _status_field(p, "Uid")) is not None and any(u in r for r in uids)
            for p in os.listdir("/proc")
            if p.isdigit()
        ):
            assert time.monotonic() < deadline, "a program outlived its fork-server"
            time.sleep(0.01)
        again = sb.run("ans = 1")
        assert again.kind is OK and sb.server_pids["basic"] != old_pid


# --- the non-root fallback ------------------------------------------------------------------


@pytest.fixture(scope="module")
def unprivileged() -> Iterator[Sandbox]:
    """A fork-server that drops root for `nobody` after pre-importing: the documented fallback."""
    with Sandbox(
        FAST.with_overrides(max_processes=8), parallelism=2, run_as_uid=65534, scientific=False
    ) as sb:
        yield sb


@pytest.mark.parametrize(
    ("program", "kinds", "error_type"),
    [
        ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", (ERROR,), "PermissionError"),
        ("import os, signal\nos.kill(-1, signal.SIGKILL)\n", (ERROR,), "PermissionError"),
        ("import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n", (ERROR,), None),
        ("import socket\nsocket.socket().connect(('127.0.0.1', 6379))\n", (ERROR,), "PermissionError"),
        (f"open('{R}', 'w')\n", (ERROR,), "OSError"),
        ("import os\nans = [p for p in os.listdir('/proc')]\n", (OK,), None),
        ("while True:\n    pass\n", (TIMEOUT,), None),
        (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nans = 1\n",
            (OK,),
            None,
        ),
        # The uid-wide process limit is reached only if the bomb outruns its deadline.
        ("import os\nwhile True:\n    os.fork()\n", (ERROR, TIMEOUT), "BlockingIOError"),
    ],
)
def test_unprivileged_fallback(
    unprivileged: Sandbox, program: str, kinds: tuple[ExecutionKind, ...], error_type: str | None
) -> None:
    server_pid = unprivileged.server_pids["basic"]
    result = unprivileged.run(program, timeout_s=0.5 if TIMEOUT in kinds else None)
    assert result.kind in kinds, result
    if error_type is not None and result.kind is ERROR:
        assert result.error_type == error_type, result
    if result.kind is OK and result.answer is not None and result.answer.type == "text":
        assert result.answer.value == "[]"  # /proc is hidden behind an empty tmpfs
    assert unprivileged.server_pids["basic"] == server_pid
    os.kill(server_pid, 0)
    children = [p for p in os.listdir("/proc") if p.isdigit() and _status_field(p, "PPid") == server_pid]
    assert children == [], "the fallback left a process behind"
    for path in CANARIES:
        assert not path.exists()
    assert unprivileged.run("ans = 2").answer == Answer("int", "2")


def test_unprivileged_fallback_report_and_shared_tmp_cleanup(unprivileged: Sandbox) -> None:
    report = unprivileged.isolation
    assert not report.root and not report.per_program_uid and not report.full
    assert report.network == "userns+netns" and report.filesystem == "read-only" and report.seccomp
    leak = f"{report.workdir_root}/shared-leak"
    first = unprivileged.run(f"open({leak!r}, 'w').write('x')\nans = 1")
    assert first.kind is OK  # same uid as the server: it can write to the shared tmpfs root...
    second = unprivileged.run(f"import os\nans = os.path.exists({leak!r})")
    assert second.answer == Answer("bool", "False")  # ...but the server clears it after each program


# --- pure data: limits and reply classification ---------------------------------------------


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="max_processes"):
        SandboxLimits(max_processes=0)
    assert SandboxLimits().with_overrides(timeout_s=None, memory_mb=64).memory_mb == 64
    with pytest.raises(ValueError, match="unknown"):
        SandboxLimits.from_wire({"timeout_s": 1, "bogus": 2})


@pytest.mark.parametrize(
    ("reply", "kind", "error_type"),
    [
        (
            {"killed": "timeout", "report": '{"kind": "ok", "answer": {"type": "int", "value": "1"}}'},
            TIMEOUT,
            None,
        ),
        ({"signal": int(signal.SIGXCPU)}, TIMEOUT, None),
        ({"killed": "output_cap"}, OUTPUT_CAP, None),
        ({"signal": int(signal.SIGSEGV)}, SIGNAL, "SIGSEGV"),
        ({"exit_code": 0, "report": '{"kind": "ok", "answer": {"type": "int", "value": "7"}}'}, OK, None),
        ({"exit_code": 0, "report": '{"kind": "ok"}'}, ERROR, "ProtocolError"),
        (
            {"exit_code": 0, "report": '{"kind": "ok", "answer": {"type": "evil", "value": "7"}}'},
            ERROR,
            "ProtocolError",
        ),
        ({"exit_code": 0, "report": "[" * 100000}, ERROR, "ProtocolError"),
        ({"exit_code": 0, "report": None}, NO_ANSWER, None),
        ({"exit_code": 70, "report": None}, ERROR, "Exit"),
        (
            {"exit_code": 0, "report": '{"kind": "memory", "error_type": "MemoryError"}'},
            MEMORY,
            "MemoryError",
        ),
    ],
)
def test_reply_classification(reply: dict[str, Any], kind: ExecutionKind, error_type: str | None) -> None:
    result = result_from_reply({"stdout": "", "output_bytes": 0, "duration_s": 0.01, **reply}, 1000)
    assert result.kind is kind
    assert result.error_type == error_type


def test_oversized_program_is_not_run(sandbox: Sandbox) -> None:
    result = sandbox.run("x = 1\n" * 10, limits=FAST.with_overrides(max_program_bytes=20))
    assert result.kind is ERROR and result.error_type == "ProgramTooLarge"


def test_a_forked_worker_gets_its_own_servers(sandbox: Sandbox) -> None:
    """After fork the child drops the parent's pipes (so the parent's servers still see EOF when
    the parent closes them) and starts fresh servers on first use; the parent's keep serving."""
    parent_pids = dict(sandbox.server_pids)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        try:
            result = sandbox.run("ans = 3")
            ok = result.answer == Answer("int", "3") and sandbox.server_pids != parent_pids
            os.write(write_end, b"1" if ok else b"0")
            sandbox.close()
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    assert os.read(read_end, 1) == b"1" and status == 0
    os.close(read_end)
    assert sandbox.server_pids == parent_pids
    assert sandbox.run("ans = 4").answer == Answer("int", "4")


def test_a_child_that_cannot_lock_down_never_runs_the_program(tmp_path: Path) -> None:
    """Lock-down fails (here: no working directory): exit 70, and no `R` on the report pipe, so
    the server knows the program never started. The program would have created a file."""
    marker = tmp_path / "ran"
    out_r, out_w = os.pipe()
    rep_r, rep_w = os.pipe()
    spec = ChildSpec(
        limits=SandboxLimits(),
        workdir=str(tmp_path / "missing"),
        uid=None,
        nproc_limit=1 << 20,
        out_fd=out_w,
        report_fd=rep_w,
        devnull_fd=os.open(os.devnull, os.O_RDWR),
        server_pid=os.getpid(),
        mapped_bytes=1 << 40,
        drop_capabilities=False,
        signal_guard=False,
    )
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child exits inside run_child
        run_child(spec, f"open('{marker}', 'w')\nans = 1\n".encode())
    os.close(out_w)
    os.close(rep_w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == SETUP_FAILED_STATUS
    assert os.read(rep_r, 100) == b""
    assert not marker.exists()
    os.close(out_r)
    os.close(rep_r)
    os.close(spec.devnull_fd)


def test_strict_refuses_partial_isolation() -> None:
    sandbox = Sandbox(FAST, parallelism=1, strict=True, scientific=False, run_as_uid=65534)
    with pytest.raises(SandboxError, match="cannot isolate programs fully"):
        sandbox.start()
    assert sandbox.server_pids == {}
