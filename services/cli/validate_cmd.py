"""`kpdd validate FILE [--out FILE]`: judge a JSON-lines file of answers with kpdd's judges.

Each input line is a JSON object with a `gold` answer and either a `response` (Chain-of-Thought
text) or a `program` (Python; run in the sandbox, never in this process). An `id` is echoed.
Each line gets exactly one JSON verdict line, in input order: `line`, `id` (if given), then the
verdict's `match`, `kind`, `extracted`, `value`, `marker`, `method`, `confidence`, `details`.

Unlabelled lines (`gold` null, blank or absent) that carry a `problem_id` (or, failing that, the
same `question` text) are judged by consensus: every such line of a problem votes with its answer
and the majority answer becomes the pseudo-gold when the agreement reaches `--min-agreement`
with at least `--min-votes` votes. Those verdicts say `method: consensus` and carry the agreement.
Their lines are held in memory until the whole file has been read (the vote needs every sample);
output after the first of them is held too, to keep the order.

A bad line (not JSON, not an object, a missing or wrongly typed field, a blank line, a line over
`MAX_LINE_BYTES`) gets a `bad_input` verdict saying what is wrong; it never stops the run. Only
an unreadable input file or output path (exit 2) or a sandbox that cannot start or keeps
failing (exit 1) ends the command early. A summary by verdict kind, with the number of verdicts
read through the low-confidence last-number fallback, goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from services.corpora.jsonlines import json_object
from services.errors import BadInputError, RunFailure
from services.validation.consensus import (
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_MIN_VOTES,
    form_consensus,
    vote_key_for_answer,
    vote_key_for_response,
)
from services.validation.matching import GoldSpec, judge_cot, judge_execution
from services.validation.verdict import BAD_INPUT, Verdict, failed, read_by_fallback

MAX_LINE_BYTES = 8 << 20
DEFAULT_BATCH = 256
_BOM = b"\xef\xbb\xbf"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "validate",
        help="judge a JSON-lines file of CoT responses / PoT programs against gold answers",
        description=(
            "Reads JSON lines, each with 'gold' and either 'response' (Chain-of-Thought text) or "
            "'program' (Python, run in the sandbox), and writes one JSON verdict per input line, in "
            "order. Lines with a null gold and a 'problem_id' are judged by consensus. "
            "Policy: docs/answer_matching.md."
        ),
    )
    parser.add_argument("file", metavar="FILE", type=Path, help="input JSON-lines file ('-' for stdin)")
    parser.add_argument("--out", metavar="FILE", type=Path, help="write verdicts here (default: stdout)")
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=DEFAULT_MIN_AGREEMENT,
        help=f"consensus: share of a problem's samples that must agree (default {DEFAULT_MIN_AGREEMENT})",
    )
    parser.add_argument(
        "--min-votes",
        type=int,
        default=DEFAULT_MIN_VOTES,
        help=f"consensus: fewest votes a pseudo-gold needs (default {DEFAULT_MIN_VOTES})",
    )
    parser.add_argument("--timeout", type=float, help="sandbox: wall-clock seconds per program (default 5)")
    parser.add_argument("--memory-mb", type=int, help="sandbox: memory per program in MiB (default 512)")
    parser.add_argument("--parallelism", type=int, help="sandbox: programs run at once (default: CPUs)")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH, help="lines read and judged together (default 256)"
    )
    parser.set_defaults(handler=run_validate)


@dataclass(slots=True)
class _Line:
    """One input line on its way to a verdict."""

    number: int
    record_id: Any = None
    gold: str | None = None
    group: str | None = None  # consensus group when unlabelled
    response: str | None = None
    program: str | None = None
    execution: Any = None  # the sandbox's ExecutionResult for a program line
    vote: str | None = None
    verdict: Verdict | None = None


@dataclass(slots=True)
class _Output:
    """Writes verdict lines in input order, holding those after a line that is still pending."""

    stream: IO[bytes]
    held: list[_Line] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    # Verdicts whose answer came from the last-number fallback (confidence `low`).
    fallback: int = 0

    def add(self, line: _Line) -> None:
        self.held.append(line)
        self.flush_ready()

    def flush_ready(self) -> None:
        done = 0
        for line in self.held:
            if line.verdict is None:
                break
            self.write(line)
            done += 1
        del self.held[:done]

    def write(self, line: _Line) -> None:
        assert line.verdict is not None
        document: dict[str, Any] = {"line": line.number}
        if line.record_id is not None:
            document["id"] = line.record_id
        document.update(line.verdict.to_json())
        self.stream.write(orjson.dumps(document, option=orjson.OPT_APPEND_NEWLINE))
        self.counts[line.verdict.kind] += 1
        self.fallback += read_by_fallback(line.verdict)


def run_validate(args: argparse.Namespace) -> int:
    if not 0.0 < args.min_agreement <= 1.0:
        raise BadInputError(f"--min-agreement must be in (0, 1], got {args.min_agreement}")
    if args.min_votes < 1:
        raise BadInputError(f"--min-votes must be at least 1, got {args.min_votes}")
    if args.batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1, got {args.batch_size}")
    runner = _ProgramRunner(args.timeout, args.memory_mb, args.parallelism)
    source = _open_input(args.file)
    try:
        out_stream = _open_output(args.out)
        try:
            output = _Output(out_stream)
            _validate_stream(source, output, runner, args)
            out_stream.flush()
        finally:
            if out_stream is not sys.stdout.buffer:
                out_stream.close()
    finally:
        runner.close()
        if source is not sys.stdin.buffer:
            source.close()
    total = sum(output.counts.values())
    summary = ", ".join(f"{kind} {count}" for kind, count in output.counts.most_common())
    print(
        f"kpdd validate: {total} line(s): {summary or 'nothing to judge'}; "
        f"{output.fallback} read through the low-confidence last-number fallback",
        file=sys.stderr,
    )
    return 0


def _open_input(path: Path) -> IO[bytes]:
    if str(path) == "-":
        return sys.stdin.buffer
    if not path.exists():
        raise BadInputError(f"{path}: no such file; check the path (relative to {Path.cwd()})")
    if path.is_dir():
        raise BadInputError(f"{path}: is a folder; give a JSON-lines file")
    try:
        return path.open("rb")
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read it ({exc.strerror})") from None


def _open_output(path: Path | None) -> IO[bytes]:
    if path is None or str(path) == "-":
        return sys.stdout.buffer
    try:
        return path.open("wb")
    except OSError as exc:
        raise BadInputError(f"--out {path}: cannot write it ({exc.strerror})") from None


def _validate_stream(
    source: IO[bytes], output: _Output, runner: _ProgramRunner, args: argparse.Namespace
) -> None:
    pending: dict[str, list[_Line]] = defaultdict(list)
    batch: list[_Line] = []
    for line in _read_lines(source):
        batch.append(line)
        if len(batch) >= args.batch_size:
            _judge_batch(batch, output, runner, pending)
            batch = []
    if batch:
        _judge_batch(batch, output, runner, pending)
    for lines in pending.values():
        consensus = form_consensus(
            [line.vote for line in lines], min_agreement=args.min_agreement, min_votes=args.min_votes
        )
        for line in lines:
            line.verdict = _judge(line, consensus)
            line.response = line.program = line.execution = None  # free memory as we go
    output.flush_ready()


def _judge_batch(
    batch: list[_Line], output: _Output, runner: _ProgramRunner, pending: dict[str, list[_Line]]
) -> None:
    programs = [line for line in batch if line.verdict is None and line.program is not None]
    if programs:
        results = runner.run([line.program or "" for line in programs])
        for line, result in zip(programs, results, strict=True):
            line.execution = result
            line.program = None
    for line in batch:
        if line.verdict is None:
            if line.group is not None:
                line.vote = _vote(line)
                pending[line.group].append(line)
            else:
                line.verdict = _judge(line, line.gold)
                line.response = line.execution = None
        output.add(line)


def _judge(line: _Line, gold: GoldSpec) -> Verdict:
    if line.execution is not None:
        return judge_execution(line.execution, gold)
    return judge_cot(line.response or "", gold)


def _vote(line: _Line) -> str | None:
    if line.execution is not None:
        kind = getattr(line.execution.kind, "value", line.execution.kind)
        return vote_key_for_answer(line.execution.answer) if kind == "ok" else None
    return vote_key_for_response(line.response or "")


# --- reading ---------------------------------------------------------------------------------


def _read_lines(source: IO[bytes]) -> Iterator[_Line]:
    """Every physical line of the input as a `_Line`, bad ones already carrying a verdict."""
    number = 0
    while True:
        raw = source.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while True:  # skip the rest of the oversized line without holding it
                rest = source.readline(1 << 20)
                if not rest or rest.endswith(b"\n"):
                    break
            yield _bad(number, f"line longer than {MAX_LINE_BYTES >> 20} MiB; not read")
            continue
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        yield _parse_line(number, raw)


def _parse_line(number: int, raw: bytes) -> _Line:
    if not raw.strip():
        return _bad(number, "blank line; expected a JSON object")
    try:
        record = json_object(raw)
    except ValueError as exc:
        return _bad(number, str(exc))
    line = _Line(number, record_id=record.get("id"))
    if not isinstance(line.record_id, str | int | float | None) or isinstance(line.record_id, bool):
        line.record_id = None
        return _bad_line(line, "field 'id' must be a string or a number")
    response, program = record.get("response"), record.get("program")
    if response is not None and program is not None:
        return _bad_line(line, "give either 'response' (CoT) or 'program' (PoT), not both")
    if response is None and program is None:
        return _bad_line(line, "missing 'response' (CoT text) or 'program' (PoT code)")
    if response is not None and not isinstance(response, str):
        return _bad_line(line, f"field 'response' must be a string, got {type(response).__name__}")
    if program is not None and not isinstance(program, str):
        return _bad_line(line, f"field 'program' must be a string, got {type(program).__name__}")
    line.response, line.program = response, program
    gold = record.get("gold")
    if isinstance(gold, bool) or not isinstance(gold, str | int | float | None):
        return _bad_line(line, f"field 'gold' must be text or a number, got {type(gold).__name__}")
    if gold is not None and not (isinstance(gold, str) and not gold.strip()):
        line.gold = gold if isinstance(gold, str) else repr(gold) if isinstance(gold, float) else str(gold)
        return line
    group = _group_key(record)
    if group is None:
        if "gold" not in record:
            return _bad_line(
                line,
                "missing field 'gold' (give the gold answer, or null with a 'problem_id' to judge "
                "by consensus)",
            )
        line.verdict = failed("no_gold", "no gold answer and no 'problem_id' to form a consensus with")
        return line
    line.group = group
    return line


def _group_key(record: dict[str, Any]) -> str | None:
    problem_id = record.get("problem_id")
    if isinstance(problem_id, str | int) and not isinstance(problem_id, bool) and str(problem_id).strip():
        return f"id:{problem_id}"
    question = record.get("question")
    if isinstance(question, str) and question.strip():
        return "question:" + " ".join(question.split())
    return None


def _bad(number: int, reason: str) -> _Line:
    return _bad_line(_Line(number), reason)


def _bad_line(line: _Line, reason: str) -> _Line:
    line.response = line.program = None
    line.verdict = failed(BAD_INPUT, reason)
    return line


# --- the sandbox -----------------------------------------------------------------------------


class _ProgramRunner:
    """Runs program lines in the sandbox, started on the first program (never for CoT-only files).

    A sandbox failure (not a program's) is retried once with a fresh server, then ends the run:
    verdicts for programs that were never run would be wrong.
    """

    def __init__(self, timeout_s: float | None, memory_mb: int | None, parallelism: int | None) -> None:
        self.timeout_s, self.memory_mb, self.parallelism = timeout_s, memory_mb, parallelism
        self._sandbox: Any = None
        if timeout_s is not None and not 0 < timeout_s <= 3600:
            raise BadInputError(f"--timeout must be in (0, 3600] seconds, got {timeout_s}")
        if memory_mb is not None and memory_mb < 16:
            raise BadInputError(f"--memory-mb must be at least 16, got {memory_mb}")
        if parallelism is not None and not 1 <= parallelism <= 64:
            raise BadInputError(f"--parallelism must be in [1, 64], got {parallelism}")

    def run(self, programs: list[str]) -> list[Any]:
        from services.validation.sandbox import Sandbox, SandboxError

        for attempt in (1, 2):
            try:
                if self._sandbox is None:
                    self._sandbox = Sandbox(parallelism=self.parallelism).start()
                return list(
                    self._sandbox.run_many(programs, timeout_s=self.timeout_s, memory_mb=self.memory_mb)
                )
            except SandboxError as exc:
                self.close()
                if attempt == 2:
                    raise RunFailure(
                        f"the program sandbox failed: {exc}; programs cannot be judged without it "
                        "(see docs/sandbox.md)"
                    ) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
