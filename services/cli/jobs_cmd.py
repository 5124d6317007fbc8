"""`kpdd status`, `resume`, `cancel`: following and steering generation jobs.

`kpdd status JOB --watch` (and `kpdd generate --wait`, which follows the same way) polls the job
every second until it ends:

- on a terminal, a progress bar, then the job's status;
- when stdout is not a terminal (logs, CI), one plain line each time the job's state, problem
  counts or spend change, then the job's status;
- with `--json`, one JSON line per change (`"event": "update"`, the fields of `status --json`)
  and a last line when the job has ended (`"event": "end"`, with its `exit_code`).

Exit code: 0 when the job ends `completed` or `budget_exhausted` (it did what it was allowed
to); 1 when it ends `failed` or `cancelled` (it did not: a script or CI step following it should
not go on as if it had).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from services.cli.common import database_engine, print_json
from services.config import get_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from services.generation.status import JobStatus


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="progress of a job, or a list of recent jobs")
    status.add_argument("job", nargs="?", type=int, metavar="JOB", help="job id (default: list jobs)")
    status.add_argument("--watch", action="store_true", help="refresh until the job ends")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.set_defaults(handler=run_status)

    resume = sub.add_parser("resume", help="re-queue every unfinished chunk of a job (after a crash)")
    resume.add_argument("job", type=int, metavar="JOB")
    resume.add_argument("--json", action="store_true", help="print one JSON document")
    resume.set_defaults(handler=run_resume)

    cancel = sub.add_parser("cancel", help="stop a job; its pending problems are not started")
    cancel.add_argument("job", type=int, metavar="JOB")
    cancel.add_argument("--json", action="store_true", help="print one JSON document")
    cancel.set_defaults(handler=run_cancel)


def run_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from services.generation.status import job_status, list_jobs, money

    engine = database_engine()
    if args.job is None:
        jobs = list_jobs(engine)
        if args.json:
            print_json({"jobs": [j.to_json() for j in jobs]})
            return 0
        if not jobs:
            print("no generation jobs yet: start one with `kpdd generate`")
            return 0
        table = Table(title="generation jobs")
        for column in ("job", "status", "corpus", "teachers", "modes", "problems", "valid", "spent $"):
            table.add_column(column)
        for j in jobs:
            table.add_row(
                str(j.job_id),
                j.status,
                j.corpus,
                ", ".join(j.teachers),
                ",".join(j.modes),
                f"{j.done}/{j.total_problems}",
                str(sum(r.valid for r in j.rationales)),
                money(j.spent_usd),
            )
        Console().print(table)
        return 0
    if args.watch:
        return watch(engine, args.job, as_json=args.json)
    status = job_status(engine, args.job)
    if args.json:
        print_json(status.to_json())
    else:
        print_status(status)
    return 0


ENDED_WELL = ("completed", "budget_exhausted")
POLL_S = 1.0


def exit_code(status: JobStatus) -> int:
    """0 for a job that ended completed or budget_exhausted, 1 otherwise (module doc)."""
    return 0 if status.status in ENDED_WELL else 1


def watch(engine: Engine, job_id: int, *, as_json: bool, poll_s: float = POLL_S) -> int:
    """Follow the job until it ends (module doc); returns the exit code."""
    if as_json:
        status = _poll(engine, job_id, poll_s, lambda s: _json_line("update", s))
        _json_line("end", status, exit_code=exit_code(status))
    elif sys.stdout.isatty():
        status = _watch_bar(engine, job_id, poll_s)
        print_status(status)
    else:
        status = _poll(engine, job_id, poll_s, lambda s: print(progress_line(s), flush=True))
        print_status(status)
    return exit_code(status)


def _poll(engine: Engine, job_id: int, poll_s: float, on_change: Callable[[JobStatus], None]) -> JobStatus:
    """Read the job every `poll_s` until it ends; `on_change` for each new state, problem count
    or spend (not the rate, which moves at every read)."""
    from services.generation.status import job_status

    seen: tuple[Any, ...] | None = None
    while True:
        status = job_status(engine, job_id)
        ended = status.status not in ("queued", "running")
        key = (status.status, tuple(sorted(status.states.items())), status.spent_usd)
        if key != seen and not ended:
            on_change(status)
            seen = key
        if ended:
            return status
        time.sleep(poll_s)


def progress_line(status: JobStatus) -> str:
    """One plain line: `job 3 running: 12/40 problems finished (done 11, failed 1), ...`."""
    from services.generation.status import money

    states = ", ".join(f"{k} {v}" for k, v in sorted(status.states.items()) if k != "pending")
    return (
        f"job {status.job_id} {status.status}: {status.finished}/{status.total_problems} problems "
        f"finished ({states or 'none yet'}); {status.rate_per_s:.1f} rationales/s; "
        f"spent ${money(status.spent_usd)}"
    )


def _json_line(event: str, status: JobStatus, **extra: Any) -> None:
    import json

    sys.stdout.write(json.dumps({"event": event, **status.to_json(), **extra}, default=str) + "\n")
    sys.stdout.flush()


def _watch_bar(engine: Engine, job_id: int, poll_s: float) -> JobStatus:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from services.generation.status import job_status

    status = job_status(engine, job_id)
    with Progress(
        TextColumn(f"job {job_id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("problems"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=Console(),
    ) as progress:
        task = progress.add_task("job", total=status.total_problems, rate="")
        while True:
            status = job_status(engine, job_id)
            progress.update(task, completed=status.finished, rate=f"{status.rate_per_s:.1f} rationales/s")
            if status.status not in ("queued", "running"):
                return status
            time.sleep(poll_s)


def print_status(status: JobStatus) -> None:
    from rich.console import Console
    from rich.table import Table

    from services.generation.status import money

    console = Console()
    states = ", ".join(f"{k} {v}" for k, v in sorted(status.states.items()))
    console.print(
        f"[bold]job {status.job_id}[/bold]: {status.status}  corpus {status.corpus}"
        f"{'/' + status.split if status.split else ''}  problems done {status.done}/"
        f"{status.total_problems} ({states})"
    )
    if status.total_problems and console.is_terminal:
        width = 40
        filled = int(width * status.finished / status.total_problems)
        console.print("[" + "#" * filled + "." * (width - filled) + "]")
    table = Table(show_header=True)
    for column in ("teacher", "mode", "valid", "invalid", "unparsed", "failed", "valid %"):
        table.add_column(column, justify="left" if column in ("teacher", "mode") else "right")
    for r in status.rationales:
        share = f"{100 * r.valid / r.total:.1f}" if r.total else "-"
        table.add_row(
            r.teacher,
            r.mode,
            *(str(r.verdicts.get(v, 0)) for v in ("valid", "invalid", "unparsed", "failed")),
            share,
        )
    console.print(table)
    spend = f"spent ${money(status.spent_usd)}" + (
        f" of ${money(status.budget_usd)}" if status.budget_usd is not None else ""
    )
    if status.held_usd:
        spend += f" (+ ${money(status.held_usd)} held by calls in flight)"
    if status.unknown_usd:
        spend += f" (+ ${money(status.unknown_usd)} of calls whose outcome is unknown: may be paid)"
    rate = f"{status.rate_per_s:.1f} rationales/s"
    eta = f", ETA {status.eta_s:.0f} s" if status.eta_s is not None else ""
    console.print(f"{spend}; {rate}{eta}")
    if status.batches is not None:
        b = status.batches
        shown = ", ".join(f"{k} {v}" for k, v in sorted(b.by_state.items())) or "none sent yet"
        console.print(
            f"batches: {shown}; requests answered {b.answered}/{b.requests}"
            + (f", {b.queued} queued" if b.queued else "")
            + (f", {b.waiting_chunks} chunk(s) waiting" if b.waiting_chunks else "")
            + f"; cost ${money(b.cost_usd)}, saved ${money(b.saved_usd)} against online prices"
        )
    if status.read_by_fallback:
        console.print(
            f"{status.read_by_fallback} verdict(s) read their answer through the low-confidence fallback"
        )
    if status.rationale_failures:
        rationale = ", ".join(f"{k} {v}" for k, v in sorted(status.rationale_failures.items()))
        console.print(f"rationales failed or unparsed: {rationale}")
    for failure in status.failures:
        where = f" on {', '.join(failure.workers)}" if failure.workers else ""
        times = f", recorded {failure.recorded}x{where}" if failure.recorded else ""
        console.print(
            f"failed {failure.kind}: {failure.problems} problem(s){times}: {failure.message}",
            markup=False,
            highlight=False,
        )
    if status.stop_reason:
        console.print(f"stopped: {status.stop_reason}", markup=False, highlight=False)


def run_resume(args: argparse.Namespace) -> int:
    from services.cli.generate_cmd import local_generator, run_inline
    from services.generation.dispatch import CeleryDispatcher
    from services.generation.jobs import resumable_chunks
    from services.generation.status import job_status

    settings = get_settings()
    engine = database_engine(settings)
    chunks = resumable_chunks(engine, args.job)
    if chunks and settings.broker_url:
        dispatcher = CeleryDispatcher(settings.broker_url)
        try:
            dispatcher.enqueue(args.job, chunks)
        finally:
            dispatcher.close()
    elif chunks:
        pending = job_status(engine, args.job).states.get("pending", 0)
        with local_generator(settings) as generator:
            run_inline(generator, args.job, chunks, pending, quiet=args.json)
    if args.json:
        print_json(
            {
                "job_id": args.job,
                "requeued_chunks": chunks,
                "execution": "queued" if settings.broker_url else "inline",
            }
        )
    else:
        print(
            f"job {args.job}: {len(chunks)} unfinished chunk(s) "
            f"{'re-queued' if settings.broker_url else 'run again'}"
        )
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    from services.generation.jobs import cancel_job

    stopped = cancel_job(database_engine(), args.job)
    if args.json:
        print_json({"job_id": args.job, "status": "cancelled", "problems_cancelled": stopped})
    else:
        print(f"job {args.job} cancelled: {stopped} pending problem(s) will not be started")
    return 0
