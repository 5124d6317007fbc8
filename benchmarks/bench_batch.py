"""A batch generation job of 10,000 requests against the simulator, and the same job online.

Everything in this process, no Celery: the service calls the embedded default makes
(`kpdd generate --transport batch` without a broker: `local_generator`, `run_inline`), timed one
by one, against a private PostgreSQL server (`benchmarks.common.postgres_database`, one fresh
server and database per run) and the teacher simulator as its own process (its batch
endpoints, answers from GSM8K gold solutions, zero latency online). The teacher is
`openai:gold@SIM/v1` (Files + Batch, the official `openai` SDK) or, with `--provider
anthropic`, `anthropic:gold@SIM` (Message Batches, the `anthropic` SDK), priced by a price file
so that the batch's cost and what the same answers would have cost online are recorded.

Batch run, N GSM8K train problems x CoT x S samples (N x S requests, chunks of 50, 16 threads):

1. queue: every chunk runs once with a `Generator`; every request is queued as a
   `batch_requests` row (no HTTP call) and the chunk waits;
2. submit: one `BatchPoller.cycle()` sends the batch ("time to submit"; Anthropic: one request
   carrying every line, OpenAI: a JSONL file uploaded, then the batch created); the upload's
   size is the sum of its lines;
3. the provider's wait (`--batch-delay-s`), then the simulator is asked for the batch until it
   says it ended (it computes its answers then: the provider's work, timed apart);
4. ingest: the next cycle reads the results and writes one ledger row per answer ("rows
   ingested per second after completion") and hands the chunks back (`CycleReport.requeue`);
5. rerun: the requeued chunks run again: answers replayed from the cache, judged, rationales
   upserted.

Baseline, in the same run: the same problems and samples online on a fresh database, same
`Generator` and threads, simulator at zero latency; rationales per second end to end. Both runs
end with exact counts (rationales, ledger rows, batch requests all `done`), or the script fails.

    .venv/bin/python -m benchmarks.bench_batch [--problems 5000] [--samples 2]
    .venv/bin/python -m benchmarks.bench_batch --provider anthropic
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from benchmarks.common import REPO, cpu_seconds, postgres_database
from db.engine import dispose_engines, get_engine
from db.models import BatchRequest, GenerationJob, ProviderBatch, Rationale, TeacherCall
from services.cli.generate_cmd import local_generator
from services.config import get_settings
from services.corpora.gsm8k import GSM8KLoader
from services.corpora.ingest import ingest_corpus
from services.generation.batches import BatchPoller, PollerSettings
from services.generation.jobs import create_job
from services.generation.params import GenerateParams
from services.teachers.batches import BatchLine
from services.teachers.simulator.process import SimulatorProcess, spawn_simulator

DATASETS = Path(os.environ.get("KPDD_DATASETS_DIR", REPO.parent / "shared" / "datasets"))
GSM8K_TRAIN = DATASETS / "gsm8k" / "train.jsonl"
PRICE = {"input": 0.15, "output": 0.6}  # dollars per million tokens, online; a batch pays half
API_KEY = "sk-bench-batch-0001"
# What each wire format needs: the teacher spec (SIM: the simulator's URL), the batch's path and
# the status that says its results can be read.
PROVIDERS = {
    "openai": ("openai:gold@{sim}/v1", "/v1/batches/{id}", "status", "completed"),
    "anthropic": ("anthropic:gold@{sim}", "/v1/messages/batches/{id}", "processing_status", "ended"),
}
POLL_S = 1.0  # PollerSettings.poll_interval_s


class BenchFailure(SystemExit):
    pass


def check(condition: bool, what: str) -> None:
    """Fail loudly: a benchmark whose counts are off measured something else."""
    if not condition:
        raise BenchFailure(f"bench_batch: check failed: {what}")


# --- CPU accounting ------------------------------------------------------------------------------


def postmaster_pid(engine: Engine) -> int | None:
    with engine.connect() as conn:
        datadir = conn.scalar(text("SHOW data_directory"))
    try:
        return int((Path(str(datadir)) / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Clock:
    """Wall time and CPU (this process: generator and poller threads; the simulator; Postgres)."""

    sim_pid: int
    pg_pid: int | None

    def cpu(self) -> dict[str, float]:
        return {
            "kpdd": time.process_time(),
            "simulator": cpu_seconds([self.sim_pid]),
            "postgres": cpu_seconds([self.pg_pid]) if self.pg_pid else 0.0,
        }


@dataclass
class Phase:
    name: str
    seconds: float
    count: int  # what the phase produced (requests queued, ledger rows, rationales)
    unit: str
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


@contextmanager
def timed(clock: Clock, name: str, unit: str, phases: list[Phase]) -> Iterator[Phase]:
    phase = Phase(name, 0.0, 0, unit)
    before = clock.cpu()
    start = time.perf_counter()
    yield phase
    phase.seconds = time.perf_counter() - start
    after = clock.cpu()
    phase.cpu = {k: after[k] - before[k] for k in after}
    phases.append(phase)


# --- setup ---------------------------------------------------------------------------------------


def prepare_env(tmp: Path, threads: int) -> None:
    prices = tmp / "prices.json"
    prices.write_text(
        json.dumps({"models": {"openai:gold": PRICE, "anthropic:gold": PRICE}}), encoding="utf-8"
    )
    for key in [k for k in os.environ if k.startswith("KPDD_")]:
        del os.environ[key]
    os.environ.update(
        KPDD_PRICES_FILE=str(prices),
        KPDD_DATA_DIR=str(tmp / "data"),
        KPDD_WORKER_THREADS=str(threads),
        KPDD_TEACHER_TIMEOUT_S="300",  # the upload of a 10,000-line file is one request
        OPENAI_API_KEY=API_KEY,
        ANTHROPIC_API_KEY=API_KEY,
    )
    get_settings.cache_clear()


def use_database(url: str, subset: Path, problems: int) -> Engine:
    os.environ["KPDD_DATABASE_URL"] = url
    get_settings.cache_clear()
    engine = get_engine(url, pool_size=get_settings().worker_threads + 4)
    report = ingest_corpus(engine, GSM8KLoader(subset), "g", "train")
    with engine.connect() as conn:
        count = conn.scalar(text("SELECT count(*) FROM problems"))
    check(count == problems, f"{problems} problems ingested (got {count}; {report})")
    return engine


def sim_get(sim: SimulatorProcess, path: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {API_KEY}", "x-api-key": API_KEY}  # OpenAI, Anthropic
    response = httpx.get(f"{sim.url}{path}", headers=headers, timeout=600)
    response.raise_for_status()
    return dict(response.json())


def counts(engine: Engine) -> dict[str, Any]:
    with Session(engine) as session:
        rationales = session.scalar(select(func.count()).select_from(Rationale)) or 0
        valid = session.scalar(select(func.count()).where(Rationale.verdict == "valid")) or 0
        calls, batched, ok = session.execute(
            select(
                func.count(),
                func.count(TeacherCall.batch_id),
                func.count().filter(TeacherCall.status == "ok"),
            )
        ).one()
        cost = session.scalar(select(func.coalesce(func.sum(TeacherCall.cost_usd), 0)))
        requests = {
            str(state): int(n)
            for state, n in session.execute(
                select(BatchRequest.state, func.count()).group_by(BatchRequest.state)
            )
        }
        batches = {
            str(state): int(n)
            for state, n in session.execute(
                select(ProviderBatch.state, func.count()).group_by(ProviderBatch.state)
            )
        }
        jobs = list(session.scalars(select(GenerationJob.status)))
    return {
        "rationales": int(rationales),
        "valid": int(valid),
        "calls": int(calls),
        "batched_calls": int(batched),
        "ok_calls": int(ok),
        "ledger_usd": Decimal(str(cost)),
        "requests": requests,
        "batches": batches,
        "jobs": jobs,
    }


# --- the runs ------------------------------------------------------------------------------------


@dataclass
class BatchRun:
    phases: list[Phase]
    provider_wait_s: float
    finalise_s: float
    upload_bytes: int
    batches: int
    cost_usd: Decimal
    online_cost_usd: Decimal
    final: dict[str, Any]
    sim_online_requests: int
    sim_lines: int

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    @property
    def processing_s(self) -> float:
        return sum(p.seconds for p in self.phases)


@dataclass(frozen=True)
class Setup:
    subset: Path
    problems: int
    samples: int
    chunk_size: int
    provider: str
    delay_s: float
    max_batch_requests: int

    @property
    def total(self) -> int:
        return self.problems * self.samples

    def teacher(self, sim: SimulatorProcess) -> str:
        return PROVIDERS[self.provider][0].format(sim=sim.url)


def batch_run(sim: SimulatorProcess, setup: Setup) -> BatchRun:
    problems, samples, chunk_size, total = setup.problems, setup.samples, setup.chunk_size, setup.total
    teacher = setup.teacher(sim)
    _spec, path, status_key, ended = PROVIDERS[setup.provider]
    with postgres_database(None, "kpdd_bench_batch") as url:
        engine = use_database(url, setup.subset, problems)
        clock = Clock(sim.process.pid, postmaster_pid(engine))
        stats_before = sim_get(sim, "/_sim/stats")
        created = create_job(
            engine,
            GenerateParams(
                corpus="g",
                teachers=[teacher],
                modes=["cot"],
                samples=samples,
                transport="batch",
                chunk_size=chunk_size,
            ),
        )
        job = created.job_id
        phases: list[Phase] = []
        with local_generator(get_settings()) as generator:
            settings = PollerSettings(
                poll_interval_s=POLL_S,
                settle_s=0.0,
                max_requests=setup.max_batch_requests,
                max_submissions=3,
            )
            poller = BatchPoller(generator.engine, generator.client_factory, settings)
            try:
                # 1. queue
                waiting = 0
                with timed(clock, "queue", "requests queued", phases) as phase:
                    for chunk in created.chunks:
                        report = generator.process_chunk(job, chunk)
                        check(report.rationales == 0, f"chunk {chunk} queued only ({report})")
                        waiting += report.waiting
                    with Session(engine) as session:
                        phase.count = session.scalar(select(func.count()).select_from(BatchRequest)) or 0
                check(phase.count == total, f"{total} requests queued (got {phase.count})")
                check(waiting == problems, f"every problem waits for the batch (got {waiting})")
                check(
                    sim_get(sim, "/_sim/stats")["requests"] == stats_before["requests"],
                    "no HTTP call while queuing",
                )

                # 2. submit
                with timed(clock, "submit", "requests sent", phases) as phase:
                    sent = poller.cycle()
                    phase.count = sent.sent_requests
                check(
                    sent.submitted >= 1 and sent.sent_requests == total and sent.ingested == 0,
                    f"one cycle sends every request ({sent})",
                )
                submitted_at = time.monotonic()
                with Session(engine) as session:
                    rows = session.scalars(select(ProviderBatch).order_by(ProviderBatch.id)).all()
                    provider_ids = [str(b.provider_batch_id) for b in rows]
                    check(all(b.state == "in_progress" for b in rows), "the batches are in progress")
                    _client, api = poller.api(rows[0].teacher)
                    upload_bytes = sum(
                        api.line_bytes(BatchLine(r.fingerprint, r.body))
                        for r in session.scalars(select(BatchRequest))
                    )

                # 3. the provider's wait, then its own work on the results (not ours: timed apart)
                wait_s = max(setup.delay_s, POLL_S)  # the next cycle polls POLL_S after this one
                time.sleep(max(0.0, wait_s - (time.monotonic() - submitted_at)) + 0.2)
                provider_wait_s = time.monotonic() - submitted_at
                start = time.perf_counter()
                for provider_id in provider_ids:
                    while sim_get(sim, path.format(id=provider_id))[status_key] != ended:
                        time.sleep(0.2)
                finalise_s = time.perf_counter() - start

                # 4. ingest
                with timed(clock, "ingest", "ledger rows", phases) as phase:
                    done = poller.cycle()
                    phase.count = done.ingested
                check(done.ingested == total, f"one cycle ingests every answer ({done})")
                check(
                    done.requeued_requests == 0 and done.failed_requests == 0,
                    f"nothing requeued or failed ({done})",
                )
                requeue = done.requeue.get(job, [])
                check(sorted(requeue) == sorted(created.chunks), "every chunk is handed back")

                # 5. rerun
                with timed(clock, "rerun", "rationales", phases) as phase:
                    for chunk in requeue:
                        report = generator.process_chunk(job, chunk)
                        check(report.waiting == 0, f"chunk {chunk} waits no more ({report})")
                        phase.count += report.rationales
                after = poller.cycle()
                check(not after.busy(), f"nothing left for the poller ({after})")
            finally:
                poller.close()
        final = counts(engine)
        with Session(engine) as session:
            cost, online = session.execute(
                select(
                    func.coalesce(func.sum(ProviderBatch.cost_usd), 0),
                    func.coalesce(func.sum(ProviderBatch.online_cost_usd), 0),
                )
            ).one()
        check(final["rationales"] == total, f"{total} rationales ({final})")
        check(
            final["calls"] == final["batched_calls"] == final["ok_calls"] == total,
            f"{total} ledger rows paid through the batch ({final})",
        )
        check(final["requests"] == {"done": total}, f"every batch request done ({final['requests']})")
        check(set(final["batches"]) == {"ended"}, f"every batch ended ({final['batches']})")
        check(final["jobs"] == ["completed"], f"the job completed ({final['jobs']})")
        stats = sim_get(sim, "/_sim/stats")
        batch_stats = sim_get(sim, "/_sim/batch-stats")
        check(
            batch_stats["lines"] == batch_stats["distinct_custom_ids"] == total
            and batch_stats["resubmitted_after_success"] == 0,
            f"the simulator received each request once ({batch_stats})",
        )
        dispose_engines()
    return BatchRun(
        phases,
        provider_wait_s,
        finalise_s,
        upload_bytes,
        len(provider_ids),
        Decimal(str(cost)),
        Decimal(str(online)),
        final,
        stats["requests"] - stats_before["requests"],
        batch_stats["lines"],
    )


@dataclass
class OnlineRun:
    phase: Phase
    final: dict[str, Any]
    sim_requests: int


def online_run(sim: SimulatorProcess, setup: Setup) -> OnlineRun:
    problems, samples, chunk_size, total = setup.problems, setup.samples, setup.chunk_size, setup.total
    teacher = setup.teacher(sim)
    with postgres_database(None, "kpdd_bench_online") as url:
        engine = use_database(url, setup.subset, problems)
        clock = Clock(sim.process.pid, postmaster_pid(engine))
        created = create_job(
            engine,
            GenerateParams(
                corpus="g",
                teachers=[teacher],
                modes=["cot"],
                samples=samples,
                transport="online",
                chunk_size=chunk_size,
            ),
        )
        phases: list[Phase] = []
        stats_before = sim_get(sim, "/_sim/stats")
        with (
            local_generator(get_settings()) as generator,
            timed(clock, "online", "rationales", phases) as phase,
        ):
            for chunk in created.chunks:
                phase.count += generator.process_chunk(created.job_id, chunk).rationales
        stats = sim_get(sim, "/_sim/stats")
        final = counts(engine)
        check(final["rationales"] == total, f"{total} rationales ({final})")
        check(
            final["calls"] == final["ok_calls"] == total and final["batched_calls"] == 0,
            f"{total} online ledger rows ({final})",
        )
        check(final["requests"] == {} and final["batches"] == {}, "nothing went through a batch")
        check(final["jobs"] == ["completed"], f"the job completed ({final['jobs']})")
        dispose_engines()
    return OnlineRun(phases[0], final, stats["requests"] - stats_before["requests"])


# --- report --------------------------------------------------------------------------------------


def cpu_text(phase: Phase) -> str:
    c = phase.cpu
    return f"{c.get('kpdd', 0):.1f} / {c.get('simulator', 0):.1f} / {c.get('postgres', 0):.1f}"


def show(batch: BatchRun, online: OnlineRun, setup: Setup) -> dict[str, Any]:
    total = setup.total
    rows: list[tuple[str, str, str, str]] = []
    for phase in batch.phases:
        rows.append(
            (
                f"batch: {phase.name}",
                f"{phase.seconds:8.2f}",
                f"{phase.rate:10,.0f} {phase.unit}/s",
                cpu_text(phase),
            )
        )
    rows.append(
        (
            "batch: processing (sum)",
            f"{batch.processing_s:8.2f}",
            f"{total / batch.processing_s:10,.0f} rationales/s",
            "",
        )
    )
    rows.append(
        (
            "online (baseline)",
            f"{online.phase.seconds:8.2f}",
            f"{online.phase.rate:10,.0f} rationales/s",
            cpu_text(online.phase),
        )
    )
    print(f"  {'phase':<28} {'seconds':>8}  {'rate':<30} CPU s kpdd / simulator / postgres")
    for name, seconds, rate, cpu in rows:
        print(f"  {name:<28} {seconds}  {rate:<30} {cpu}")
    ingest, rerun = batch.phase("ingest"), batch.phase("rerun")
    ratio_ingest = ingest.rate / online.phase.rate
    ratio_total = batch.processing_s / online.phase.seconds
    print(
        f"  provider side (not ours): waited {batch.provider_wait_s:.1f} s after submitting "
        f"(--batch-delay-s), then {batch.finalise_s:.1f} s for the simulator to compute {total} answers"
    )
    print(
        f"  upload: {batch.upload_bytes:,} bytes in {batch.batches} batch(es) "
        f"({batch.upload_bytes / total:,.0f} bytes a line)"
    )
    print(f"  ratio batch ingest ledger rows/s : online rationales/s = {ratio_ingest:.1f}x")
    print(f"  ratio batch rerun rationales/s : online rationales/s = {rerun.rate / online.phase.rate:.1f}x")
    print(f"  ratio batch processing time : online time = {ratio_total:.2f}")
    saving = batch.online_cost_usd - batch.cost_usd
    print(
        f"  cost: batch ${batch.cost_usd:.6f}, the same answers online ${batch.online_cost_usd:.6f} "
        f"(saved ${saving:.6f}); the online run's ledger ${online.final['ledger_usd']:.6f}"
    )
    print(
        f"  checks: batch {batch.final['rationales']} rationales ({batch.final['valid']} valid), "
        f"{batch.final['calls']} ledger rows ({batch.final['batched_calls']} through the batch), "
        f"requests {batch.final['requests']}, {batch.sim_online_requests} online calls; online "
        f"{online.final['rationales']} rationales ({online.final['valid']} valid), "
        f"{online.final['calls']} ledger rows, {online.sim_requests} calls"
    )
    return {
        "bench": "batch",
        "provider": setup.provider,
        "problems": setup.problems,
        "samples": setup.samples,
        "requests": total,
        "batches": batch.batches,
        "max_batch_requests": setup.max_batch_requests,
        "phases": {
            p.name: {
                "seconds": round(p.seconds, 3),
                "count": p.count,
                "per_s": round(p.rate, 1),
                "cpu_s": {k: round(v, 2) for k, v in p.cpu.items()},
            }
            for p in batch.phases
        },
        "time_to_submit_s": round(batch.phase("submit").seconds, 3),
        "ingest_rows_per_s": round(ingest.rate, 1),
        "batch_processing_s": round(batch.processing_s, 3),
        "provider_wait_s": round(batch.provider_wait_s, 3),
        "provider_finalise_s": round(batch.finalise_s, 3),
        "upload_bytes": batch.upload_bytes,
        "online_s": round(online.phase.seconds, 3),
        "online_rationales_per_s": round(online.phase.rate, 1),
        "online_cpu_s": {k: round(v, 2) for k, v in online.phase.cpu.items()},
        "ratio_ingest_vs_online": round(ratio_ingest, 2),
        "ratio_processing_vs_online": round(ratio_total, 3),
        "batch_cost_usd": str(batch.cost_usd),
        "batch_online_cost_usd": str(batch.online_cost_usd),
        "online_ledger_usd": str(online.final["ledger_usd"]),
        "valid": {"batch": batch.final["valid"], "online": online.final["valid"]},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problems", type=int, default=5000, help="GSM8K train problems (default 5000)")
    parser.add_argument("--samples", type=int, default=2, help="samples per problem (default 2)")
    parser.add_argument("--chunk-size", type=int, default=50, help="problems per chunk (default 50)")
    parser.add_argument("--threads", type=int, default=16, help="Generator threads (default 16)")
    parser.add_argument(
        "--batch-delay-s", type=float, default=5.0, help="the simulator's batch delay (default 5)"
    )
    parser.add_argument(
        "--provider",
        choices=sorted(PROVIDERS),
        default="openai",
        help="the teacher's wire format: openai:gold (Files + Batch, default) or anthropic:gold "
        "(Message Batches)",
    )
    parser.add_argument(
        "--max-batch-requests",
        type=int,
        default=50_000,
        help="requests per provider batch at most (PollerSettings.max_requests, default 50000)",
    )
    args = parser.parse_args(argv)
    if not GSM8K_TRAIN.exists():
        raise BenchFailure(f"bench_batch: {GSM8K_TRAIN} is missing (KPDD_DATASETS_DIR)")
    load = os.getloadavg()
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    total = args.problems * args.samples
    print(
        f"batch job: {args.problems} GSM8K problems x CoT x {args.samples} samples = {total} requests, "
        f"chunks of {args.chunk_size}, {args.threads} threads, in-process (no Celery), simulator "
        f"--batch-delay-s {args.batch_delay_s:g}, teacher {args.provider}:gold, at most "
        f"{args.max_batch_requests} requests a batch; baseline: the same requests online, zero latency"
    )
    tmp = Path(tempfile.mkdtemp(prefix="kpdd-bench-batch-"))
    subset = tmp / "gsm8k.jsonl"
    lines = GSM8K_TRAIN.read_text(encoding="utf-8").splitlines()[: args.problems]
    check(len(lines) == args.problems, f"{args.problems} problems in {GSM8K_TRAIN} (it has {len(lines)})")
    subset.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare_env(tmp, args.threads)
    setup = Setup(
        subset,
        args.problems,
        args.samples,
        args.chunk_size,
        args.provider,
        args.batch_delay_s,
        args.max_batch_requests,
    )
    sim = spawn_simulator(["--corpus", f"gsm8k:{GSM8K_TRAIN}", "--batch-delay-s", str(args.batch_delay_s)])
    try:
        batch = batch_run(sim, setup)
        online = online_run(sim, setup)
    finally:
        sim.close()
        shutil.rmtree(tmp, ignore_errors=True)
    summary = show(batch, online, setup)
    print(json.dumps(summary))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
