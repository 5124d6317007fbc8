"""`ExecutionResult`: what running one program produced, as plain data.

The verdict `kind` is decided in this order (first match wins):

1. `timeout`: the fork-server killed the program at its wall-clock deadline, or the kernel's CPU
   limit did (SIGXCPU).
2. `output_cap`: the server killed it for writing more than `max_output_bytes`.
3. `signal`: the process died of any other signal (SIGSEGV from runaway C recursion, SIGXFSZ
   from a file over `max_file_bytes`, a program that killed itself); `error_type` is the
   signal's name.
4. What the child reported: `ok` (with an `answer`), `error` (an exception: `error_type` is its
   class name, `error_message` its text, both truncated), `memory` (a `MemoryError`, including
   numpy's), or `no_answer` (neither `ans` nor `solution` was defined).
5. A process that exited without reporting: `no_answer` for status 0 (e.g. `os._exit(0)`),
   otherwise `error` with `error_type` `Exit`. A report that is not the expected JSON (the program
   wrote to the report pipe itself) is `error` with `error_type` `ProtocolError`.

A child that could not lock itself down never runs its program; that is not a verdict but a
`SandboxError` raised by `Sandbox.run_many` (the machine cannot apply the limits).

Everything here is built from JSON text the child wrote: no object the program made ever reaches
the host, so nothing the program defined (`__eq__`, `__str__`, ...) can run outside the child.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MAX_MESSAGE_CHARS = 500


class ExecutionKind(StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    OUTPUT_CAP = "output_cap"
    SIGNAL = "signal"
    NO_ANSWER = "no_answer"


ANSWER_TYPES = ("int", "fraction", "decimal", "float", "bool", "none", "text")


@dataclass(slots=True, frozen=True)
class Answer:
    """A program's answer, converted inside the child to an exact plain value.

    `type` and `value`:
    - `int`: decimal digits (`"-12"`), from `int`, `bool`-free numpy integers, sympy `Integer`.
    - `fraction`: canonical `"p/q"` in lowest terms, or `"p"` when whole (`Fraction`, sympy
      `Rational`); the same text as `services.validation.numbers.format_fraction`.
    - `decimal`: `str(Decimal)` (`"1.50"`, `"1E+2"`, `"NaN"`), exact as written.
    - `float`: `repr(float)` (`"0.1"`, `"inf"`), from `float`, numpy floats, sympy `Float`.
    - `bool`: `"True"` or `"False"` (Python and numpy booleans, sympy `true`/`false`).
    - `none`: `""` (`ans = None`).
    - `text`: `str(value)` of anything else (`str`, lists, sympy expressions...), cut to
      `max_answer_chars` with `truncated` set.
    """

    type: str
    value: str
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "value": self.value, "truncated": self.truncated}


@dataclass(slots=True, frozen=True)
class ServerCpu:
    """CPU used by one fork-server since it started (`Sandbox.cpu_usage()`), in seconds.

    `server_s` is the fork-server's own (forking, watching, reaping, replying; its start-up and
    pre-imports included); `children_s` that of every child it reaped, programs and their strays,
    from `wait4`; `programs` how many programs it has run.
    """

    server_s: float
    children_s: float
    programs: int


@dataclass(slots=True)
class ExecutionResult:
    """The outcome of one program; see the module docstring for how `kind` is decided."""

    kind: ExecutionKind
    answer: Answer | None = None
    error_type: str | None = None
    error_message: str | None = None
    stdout: str = ""  # the first `stdout_excerpt_bytes` of stdout+stderr, decoded leniently
    stdout_truncated: bool = False
    output_bytes: int = 0  # everything the program wrote to stdout+stderr
    duration_s: float = 0.0  # wall clock from fork to exit, as the fork-server measured it
    # CPU (user + system) of the program's process from fork to exit, lock-down included, as the
    # fork-server's wait4 reported it; None where no process ran. Strays it left are not in it.
    cpu_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.kind is ExecutionKind.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "answer": self.answer.as_dict() if self.answer else None,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "stdout": self.stdout,
            "stdout_truncated": self.stdout_truncated,
            "output_bytes": self.output_bytes,
            "duration_s": self.duration_s,
            "cpu_ms": self.cpu_ms,
        }


_CHILD_KINDS = {
    ExecutionKind.OK.value,
    ExecutionKind.ERROR.value,
    ExecutionKind.MEMORY.value,
    ExecutionKind.NO_ANSWER.value,
}


def _short(text: Any) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _parse_report(raw: str, max_answer_chars: int) -> tuple[str, Answer | None, str | None, str | None]:
    """Validate the child's JSON report; raise ValueError on anything unexpected."""
    report = json.loads(raw)
    if not isinstance(report, dict) or report.get("kind") not in _CHILD_KINDS:
        raise ValueError("report is not an object with a known kind")
    answer = None
    if report.get("answer") is not None:
        a = report["answer"]
        if (
            not isinstance(a, dict)
            or a.get("type") not in ANSWER_TYPES
            or not isinstance(a.get("value"), str)
            or not isinstance(a.get("truncated", False), bool)
        ):
            raise ValueError("malformed answer")
        value, truncated = a["value"], a.get("truncated", False)
        if len(value) > max_answer_chars and a["type"] == "text":
            value, truncated = value[:max_answer_chars], True
        answer = Answer(a["type"], value, truncated)
    error_type, message = report.get("error_type"), report.get("error_message")
    if not isinstance(error_type, str | None) or not isinstance(message, str | None):
        raise ValueError("malformed error")
    if report["kind"] == ExecutionKind.OK.value and answer is None:
        raise ValueError("ok without an answer")
    return report["kind"], answer, error_type, message


def result_from_reply(reply: dict[str, Any], max_answer_chars: int) -> ExecutionResult:
    """Build the result of one program from the fork-server's reply (see module docstring)."""
    base = ExecutionResult(
        kind=ExecutionKind.ERROR,
        stdout=str(reply.get("stdout", "")),
        stdout_truncated=bool(reply.get("stdout_truncated", False)),
        output_bytes=int(reply.get("output_bytes", 0)),
        duration_s=float(reply.get("duration_s", 0.0)),
        cpu_ms=round(float(reply["cpu_s"]) * 1000, 3) if reply.get("cpu_s") is not None else None,
    )
    killed = reply.get("killed")
    term_signal = reply.get("signal")
    exit_code = reply.get("exit_code")
    if killed == "timeout" or term_signal == signal.SIGXCPU:
        base.kind = ExecutionKind.TIMEOUT
        base.error_message = "wall-clock deadline" if killed == "timeout" else "CPU time limit"
        return base
    if killed == "output_cap":
        base.kind = ExecutionKind.OUTPUT_CAP
        base.error_message = "stdout+stderr exceeded max_output_bytes"
        return base
    if killed is not None:
        base.error_type, base.error_message = "SandboxFailure", _short(killed)
        return base
    if term_signal is not None:
        base.kind = ExecutionKind.SIGNAL
        base.error_type = _signal_name(int(term_signal))
        base.error_message = f"killed by {base.error_type}"
        return base
    raw = reply.get("report")
    if raw:
        try:
            kind, answer, error_type, message = _parse_report(str(raw), max_answer_chars)
        except (ValueError, TypeError, RecursionError):
            base.error_type = "ProtocolError"
            base.error_message = "the program wrote something other than the report to the report pipe"
            return base
        base.kind = ExecutionKind(kind)
        base.answer, base.error_type, base.error_message = answer, _short(error_type), _short(message)
        return base
    if exit_code == 0:
        base.kind = ExecutionKind.NO_ANSWER
        base.error_message = "the process exited before an answer was read (os._exit?)"
        return base
    base.error_type = "Exit"
    base.error_message = f"the process exited with status {exit_code} without reporting"
    return base
