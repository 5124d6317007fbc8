"""`kpdd generate` and `kpdd worker`: distributed rationale generation (`status`, `resume`,
`cancel` are in `jobs_cmd`).

With `KPDD_BROKER_URL` set, `generate` records the job in the database, queues its chunks on
Celery and returns the job id; `kpdd worker` processes (and can run on many hosts). Without a
broker (the embedded default) the same chunks run here, in-process, with a progress bar.

With a broker, `generate` first connects to it (a few seconds at most): a broker that is down
or unreachable ends the command with one line and exit 1, a URL no transport reads (a bad
scheme) with exit 2, and in both cases no job is written. A send that fails after the job is
written (the broker went away in between) is recorded on the job's chunks (`enqueue_error`):
the command says so and exits 1, and the workers' reconciler, or `kpdd resume JOB`, queues
those chunks once the broker is reachable.

`kpdd worker` starts Celery as a child program (`python -m celery -A workers.app worker`): the
CLI lives in `services`, which never imports `workers`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from services.cli.common import database_engine, print_json, redact_url
from services.config import Settings, get_settings
from services.errors import BadInputError, ConfigError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from services.generation.execute import Generator
    from services.generation.params import GenerateParams

# The generation stack (SDKs, sandbox, SQLAlchemy models) and rich are imported inside the
# handlers, so `kpdd generate --help` and the parser of every command stay light.


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gen = sub.add_parser("generate", help="queue a generation job over a corpus")
    gen.add_argument("--corpus", required=True, help="corpus name (see `kpdd corpora`)")
    gen.add_argument("--split", help="only this split (default: every split)")
    gen.add_argument(
        "--teacher",
        action="append",
        required=True,
        metavar="SPEC",
        help="teacher spec, repeatable: openai:gpt-4o-mini,temperature=0.7,rpm=500 (see README)",
    )
    gen.add_argument(
        "-O",
        "--teacher-option",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="an option for every teacher given, e.g. -O temperature=0.7",
    )
    gen.add_argument(
        "--mode",
        choices=("cot", "pot", "both"),
        default="cot",
        help="solution kind: cot (Chain-of-Thought text), pot (Python program) or both",
    )
    gen.add_argument("--samples", type=int, default=1, help="samples per problem, teacher and mode")
    gen.add_argument("--until-valid", type=int, help="keep sampling until this many are valid")
    gen.add_argument("--max-attempts", type=int, help="with --until-valid: most samples to try")
    gen.add_argument(
        "--stage-mode",
        choices=("single", "staged"),
        default="single",
        help="single: one call writes the three stages; staged: one call per stage",
    )
    gen.add_argument("--budget-usd", help="never spend more than this many dollars")
    gen.add_argument("--limit", type=int, help="only the first N problems (by id)")
    gen.add_argument("--chunk-size", type=int, default=16, help="problems per queued task (default 16)")
    gen.add_argument(
        "--refresh",
        action="store_true",
        help="bypass the response cache: send every call again and store the new responses over "
        "the cached ones (later jobs replay the new ones); stored rationales are made again",
    )
    gen.add_argument(
        "--reuse-any-options",
        action="store_true",
        help="reuse stored rationales made with other generation options (temperature, top_p, "
        "max_tokens, seed, ...) or before options were recorded; by default only rationales made "
        "with this job's options are reused",
    )
    gen.add_argument(
        "--transport",
        choices=("online", "batch"),
        default="online",
        help="online: one HTTP call per request; batch: every teacher's requests go through its "
        "provider's batch API (half the price, answered within 24 h; see README, Batch jobs). "
        "One teacher alone: --teacher SPEC,batch=true",
    )
    gen.add_argument("--wait", action="store_true", help="with a broker: follow progress until the end")
    gen.add_argument("--json", action="store_true", help="print one JSON document")
    gen.set_defaults(handler=run_generate)

    worker = sub.add_parser("worker", help="start a Celery worker (needs KPDD_BROKER_URL)")
    worker.add_argument(
        "--concurrency",
        type=int,
        help="worker processes (default 2; 1 for a training-only worker: one run at a time per host)",
    )
    worker.add_argument(
        "--threads", type=int, help="teacher calls in flight per process (default KPDD_WORKER_THREADS, 16)"
    )
    worker.add_argument(
        "--queues",
        default="generation",
        help="queues to consume, comma-separated: generation (default), training (GPU hosts: "
        "runs queued by `kpdd train --submit`), or full Celery queue names",
    )
    worker.add_argument("--loglevel", default="INFO", help="Celery log level: DEBUG, INFO, WARNING, ERROR")
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics of the worker on this port (default: KPDD_WORKER_METRICS_PORT)",
    )
    worker.set_defaults(handler=run_worker)


def _params(args: argparse.Namespace) -> GenerateParams:
    from services.generation.params import GenerateParams, parse_budget, parse_modes
    from services.teachers.spec import parse_option_pairs, parse_spec

    shared = parse_option_pairs(args.teacher_option)
    teachers = [parse_spec(text, shared).to_text() for text in args.teacher]
    return GenerateParams(
        corpus=args.corpus,
        split=args.split,
        teachers=teachers,
        modes=parse_modes(args.mode),
        samples=args.samples,
        until_valid=args.until_valid,
        max_attempts=args.max_attempts,
        stage_mode=args.stage_mode,
        budget_usd=parse_budget(args.budget_usd),
        limit=args.limit,
        chunk_size=args.chunk_size,
        refresh=args.refresh,
        reuse_any_options=args.reuse_any_options,
        transport=args.transport,
    )


@contextmanager
def local_generator(settings: Settings) -> Iterator[Generator]:
    """The in-process runner of the embedded default (no broker, no shared rate limiter)."""
    from services.generation.execute import Generator
    from services.teachers.registry import build_client

    url = settings.resolved_database_url
    generator = Generator(
        database_engine(settings),
        lambda spec: build_client(spec, database_url=url),
        threads=settings.worker_threads,
        sandbox_parallelism=settings.sandbox_workers,
    )
    try:
        yield generator
    finally:
        generator.close()


def run_generate(args: argparse.Namespace) -> int:
    from services.generation.jobs import create_job, submit_job
    from services.generation.status import job_status

    settings = get_settings()
    params = _params(args)
    engine = database_engine(settings)
    if settings.broker_url:
        created = submit_job(engine, params, settings.broker_url)
        if not args.wait:
            if args.json:
                print_json(
                    {
                        "job_id": created.job_id,
                        "problems": created.total_problems,
                        "chunks": len(created.chunks),
                        "execution": "queued",
                    }
                )
            else:
                print(created.job_id)
                print(
                    f"queued job {created.job_id}: {created.total_problems} problems in "
                    f"{len(created.chunks)} chunks; follow it with `kpdd status {created.job_id} --watch`",
                    file=sys.stderr,
                )
            return 0
        return _follow(engine, created.job_id, args.json)
    created = create_job(engine, params, queued=False)
    with local_generator(settings) as generator:
        run_inline(generator, created.job_id, created.chunks, created.total_problems, quiet=args.json)
    from services.cli.jobs_cmd import exit_code, print_status

    status = job_status(engine, created.job_id)
    if args.json:
        print_json(status.to_json())
    else:
        print_status(status)
    return exit_code(status)


def run_inline(generator: Generator, job_id: int, chunks: list[int], total: int, *, quiet: bool) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from services.generation.batches import follow_batches_inline
    from services.generation.failures import run_chunk

    console = Console(stderr=True)
    with Progress(
        TextColumn(f"job {job_id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("problems"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
    ) as progress:
        task = progress.add_task("generate", total=total)
        for chunk in chunks:
            report = run_chunk(generator, job_id, chunk)  # permanent failures recorded on the job
            progress.advance(task, report.problems - report.waiting)
            if not console.is_terminal and not quiet:
                print(f"job {job_id} chunk {chunk}: {report}", file=sys.stderr)

        def rerun(job: int, chunk: int) -> None:  # a chunk whose batch answers are in
            report = run_chunk(generator, job, chunk)
            progress.advance(task, report.problems - report.waiting)
            if not console.is_terminal and not quiet:
                print(f"job {job} chunk {chunk} (batch answers in): {report}", file=sys.stderr)

        follow_batches_inline(generator.engine, generator.client_factory, job_id, rerun)


def _follow(engine: Engine, job_id: int, as_json: bool) -> int:
    """`--wait`: follow the job as `kpdd status JOB --watch` does (its exit code too)."""
    from services.cli.jobs_cmd import watch

    return watch(engine, job_id, as_json=as_json)


def run_worker(args: argparse.Namespace) -> int:
    from services.training.dispatch import TRAINING_QUEUE, resolve_queues

    settings = get_settings()
    if not settings.broker_url:
        raise ConfigError(
            "kpdd worker needs a broker: set KPDD_BROKER_URL=redis://host:6379/0 "
            "(without one, `kpdd generate` runs its jobs in-process)"
        )
    if settings.database_url is None:
        raise ConfigError(
            "kpdd worker needs a shared database: set KPDD_DATABASE_URL=postgresql+psycopg://..."
        )
    queues = resolve_queues(args.queues)
    if not queues:
        raise BadInputError("--queues: give generation, training or both (generation,training)")
    concurrency = args.concurrency or (1 if queues == [TRAINING_QUEUE] else 2)
    if concurrency < 1:
        raise BadInputError("--concurrency: must be at least 1")
    if any(queue != TRAINING_QUEUE for queue in queues):
        # A worker that runs generation chunks judges PoT programs: its sandbox must isolate them
        # fully unless KPDD_SANDBOX_MODE=permissive (IsolationUnavailable: exit 2, one line saying
        # what is missing). Each worker process checks again when its sandbox starts.
        from services.validation.sandbox.modes import check_worker_sandbox

        warning = check_worker_sandbox(settings.sandbox_mode)
        if warning:
            print(f"kpdd worker: WARNING: {warning}", file=sys.stderr)
    from services.generation.deployment import own_deployment_id
    from services.generation.dispatch import shown_url

    engine = database_engine(settings)  # fail now, with a clear message, if the schema is not migrated
    # One line naming what this worker serves: a worker pointed at the wrong database shows here.
    print(
        f"kpdd worker: deployment {own_deployment_id(engine)} (database "
        f"{redact_url(settings.resolved_database_url)}, broker {shown_url(settings.broker_url)}); "
        f"queues {','.join(queues)}",
        file=sys.stderr,
    )
    env = dict(os.environ)
    env["KPDD_WORKER_QUEUES"] = ",".join(queues)
    port = args.metrics_port if args.metrics_port is not None else env.get("KPDD_WORKER_METRICS_PORT")
    if port is not None:
        if not str(port).isdigit() or not 0 < int(port) < 65536:
            raise BadInputError(
                f"--metrics-port / KPDD_WORKER_METRICS_PORT: {port!r} is not a TCP port (1-65535)"
            )
        import tempfile

        # prometheus_client's multiprocess mode: each pool process writes its counters here and
        # the main process sums them at each scrape (workers.metrics). A fresh folder per start.
        env["KPDD_WORKER_METRICS_PORT"] = str(port)
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="kpdd-worker-metrics-")
    if args.threads is not None:
        env["KPDD_WORKER_THREADS"] = str(args.threads)
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "--concurrency",
        str(concurrency),
        "--queues",
        ",".join(queues),
        "--loglevel",
        args.loglevel,
        "--pool",
        "prefork",
        "--without-gossip",
        "--without-mingle",
    ]
    sys.stdout.flush()
    os.execvpe(sys.executable, argv, env)
    return 0  # not reached
