"""`kpdd status`, `resume`, `cancel`: following and steering generation jobs."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

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
    if args.watch and not args.json:
        return _watch(engine, args.job)
    status = job_status(engine, args.job)
    if args.json:
        print_json(status.to_json())
    else:
        print_status(status)
    return 0


def _watch(engine: Engine, job_id: int) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from services.generation.status import job_status

    console = Console()
    status = job_status(engine, job_id)
    with Progress(
        TextColumn(f"job {job_id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("problems"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("job", total=status.total_problems, rate="")
        while True:
            status = job_status(engine, job_id)
            progress.update(task, completed=status.done, rate=f"{status.rate_per_s:.1f} rationales/s")
            if status.status not in ("queued", "running"):
                break
            time.sleep(1.0)
    print_status(status)
    return 0


def print_status(status: JobStatus) -> None:
    from rich.console import Console
    from rich.table import Table

    from services.generation.status import money

    console = Console()
    states = ", ".join(f"{k} {v}" for k, v in sorted(status.states.items()))
    console.print(
        f"[bold]job {status.job_id}[/bold]: {status.status}  corpus {status.corpus}"
        f"{'/' + status.split if status.split else ''}  problems {status.done}/"
        f"{status.total_problems} ({states})"
    )
    if status.total_problems and console.is_terminal:
        width = 40
        filled = int(width * status.done / status.total_problems)
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
    rate = f"{status.rate_per_s:.1f} rationales/s"
    eta = f", ETA {status.eta_s:.0f} s" if status.eta_s is not None else ""
    console.print(f"{spend}; {rate}{eta}")
    failures = {
        **status.problem_failures,
        **{f"rationale {k}": v for k, v in status.rationale_failures.items()},
    }
    if failures:
        console.print("failures: " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())))
    if status.stop_reason:
        console.print(f"stopped: {status.stop_reason}")


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
