"""Distributed generation benchmarks: throughput, rate-limit fidelity and scaling.

Everything real: a private PostgreSQL and Redis (as the test suite starts them), the teacher
simulator as its own process, `kpdd worker` processes (Celery, prefork), GSM8K train problems.
Each run gets a fresh database, so no run replays another's cached calls.

    .venv/bin/python -m benchmarks.bench_generation throughput [--problems 3000]
    .venv/bin/python -m benchmarks.bench_generation cpu [--problems 2000]
    .venv/bin/python -m benchmarks.bench_generation profile [--problems 2000]
    .venv/bin/python -m benchmarks.bench_generation ratelimit [--rpm 600 --seconds 70]
    .venv/bin/python -m benchmarks.bench_generation scaling     # or: latency (its second half)
    .venv/bin/python -m benchmarks.bench_generation all

- throughput: a job over N problems, CoT and PoT, at zero simulated latency, two worker
  processes; prints validated rationales/s and CPU-ms per rationale (CPU of the workers, the
  simulator, Postgres and Redis, read from /proc), and a baseline measured in the same run: the
  same work done one call at a time in one process (the research-script way), on a subset.
- cpu: whole-system CPU-ms per validated rationale (workers, their sandbox programs, the
  simulator, Postgres, Redis) for CoT only, PoT only and both, distributed, then the embedded
  default (one process) for CoT and PoT; with rates.
- profile: a CoT+PoT run with py-spy sampling every worker task process; the share of samples
  by bucket (SQLAlchemy, psycopg, the HTTP client, sandbox round trips, ...) and the top
  functions.
- ratelimit: two workers under a shared limit of R requests/minute for over a minute, against a
  simulator enforcing the same R with 429s: achieved rate over R, and 429s seen.
- scaling: the same job with 1 and 2 worker processes at zero latency; then with 2 s of
  simulated latency per call, how the rate grows with concurrency until the limiter caps it.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from benchmarks.common import cpu_seconds
from db.engine import dispose_engines, get_engine
from db.migrate import upgrade
from db.models import GenerationJob, Rationale
from services.config import get_settings
from services.corpora.gsm8k import GSM8KLoader
from services.corpora.ingest import ingest_corpus
from services.generation.dispatch import CeleryDispatcher
from services.generation.execute import Generator
from services.generation.jobs import create_job
from services.generation.params import GenerateParams
from services.teachers.registry import build_client
from services.teachers.simulator.process import SimulatorProcess, spawn_simulator
from tests.servers import PostgresServer, RedisServer

REPO = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("KPDD_DATASETS_DIR", REPO.parent / "shared" / "datasets"))
GSM8K_TRAIN = DATASETS / "gsm8k" / "train.jsonl"
WARMUP_PROBLEMS = 100  # the `cpu` runs' warm-up job, on the last problems of GSM8K train


@dataclass
class RunResult:
    label: str
    rationales: int
    valid: int
    seconds: float
    cpu_s: float
    sim_requests: int
    sim_429: int
    cpu_split: dict[str, float] | None = None

    @property
    def rate(self) -> float:
        return self.valid / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_rationale(self) -> float:
        return 1000 * self.cpu_s / max(1, self.rationales)


class Stack:
    """Private Postgres + Redis for the whole benchmark; one fresh database per run."""

    def __init__(self) -> None:
        self.pg = PostgresServer()
        self.pg.start()
        self.redis = RedisServer()
        self.redis.start()
        self.tmp = Path(tempfile.mkdtemp(prefix="kpdd-bench-gen-"))
        self.runs = 0

    def fresh_database(self, problems: int) -> str:
        self.runs += 1
        name = f"bench_{self.runs}"
        engine = create_engine(self.pg.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        engine.dispose()
        url = self.pg.url(name)
        upgrade(url)
        subset = self.tmp / f"gsm8k-{problems}.jsonl"
        if not subset.exists():
            lines = GSM8K_TRAIN.read_text(encoding="utf-8").splitlines()[:problems]
            subset.write_text("\n".join(lines) + "\n", encoding="utf-8")
        ingest_corpus(get_engine(url), GSM8KLoader(subset), "gsm8k", "train")
        warm = self.tmp / "gsm8k-warmup.jsonl"  # other problems: a warm-up job reuses nothing
        if not warm.exists():
            lines = GSM8K_TRAIN.read_text(encoding="utf-8").splitlines()[-WARMUP_PROBLEMS:]
            warm.write_text("\n".join(lines) + "\n", encoding="utf-8")
        ingest_corpus(get_engine(url), GSM8KLoader(warm), "warmup", "train")
        return url

    def env(self, url: str, threads: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KPDD_")}
        env.update(
            KPDD_DATABASE_URL=url,
            KPDD_BROKER_URL=self.redis.url(),
            KPDD_WORKER_THREADS=str(threads),
            KPDD_DATA_DIR=str(self.tmp / "data"),
            KPDD_TEACHER_TIMEOUT_S="30",
        )
        return env

    def close(self) -> None:
        self.redis.close()
        self.pg.close()


@contextmanager
def simulator(*args: str) -> Iterator[SimulatorProcess]:
    sim = spawn_simulator(["--corpus", f"gsm8k:{GSM8K_TRAIN}", *args])
    try:
        yield sim
    finally:
        sim.close()


def sim_stats(sim: SimulatorProcess) -> dict[str, int]:
    return dict(httpx.get(f"{sim.url}/_sim/stats", timeout=5).json())


@contextmanager
def workers(
    stack: Stack, env: dict[str, str], count: int, processes: int = 1
) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = []
    logs = []
    try:
        for i in range(count):
            log_path = stack.tmp / f"worker-{stack.runs}-{i}.log"
            logs.append(log_path)
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "services.cli.main",
                        "worker",
                        "--concurrency",
                        str(processes),
                        "--loglevel",
                        "WARNING",
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=log_path.open("wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        # Celery prints nothing at WARNING when ready; give the pools time to fork and warm up.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(_pool_started(p) for p in procs):
            time.sleep(0.2)
        time.sleep(1.0)
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _pool_started(proc: subprocess.Popen[bytes]) -> bool:
    """True once the worker has forked its pool process (a child exists)."""
    return any(
        Path(f"/proc/{pid}/stat").exists()
        and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(proc.pid)
        for pid in os.listdir("/proc")
        if pid.isdigit() and Path(f"/proc/{pid}/stat").exists()
    )


def wait_for(url: str, job_id: int, timeout: float = 900) -> None:
    engine = get_engine(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Session(engine) as session:
            status = session.scalar(select(GenerationJob.status).where(GenerationJob.id == job_id))
        if status not in ("queued", "running"):
            return
        time.sleep(0.2)
    raise SystemExit(f"job {job_id} did not finish in {timeout} s")


def counts(url: str) -> tuple[int, int]:
    with Session(get_engine(url)) as session:
        total = session.scalar(select(func.count()).select_from(Rationale)) or 0
        valid = session.scalar(select(func.count()).where(Rationale.verdict == "valid")) or 0
    return int(total), int(valid)


def distributed_run(
    stack: Stack,
    label: str,
    *,
    problems: int,
    modes: list[str],
    worker_count: int,
    threads: int,
    sim_args: tuple[str, ...] = (),
    teacher_options: str = "",
    chunk_size: int = 16,
    sampler: list[tuple[float, int]] | None = None,
    processes: int = 1,
    profile_to: Path | None = None,
    warmup: bool = False,
) -> RunResult:
    url = stack.fresh_database(problems)
    env = stack.env(url, threads)
    with simulator(*sim_args) as sim, workers(stack, env, worker_count, processes) as procs:
        os.environ.update({k: v for k, v in env.items() if k.startswith("KPDD_")})
        get_settings.cache_clear()
        spec = f"sim:gold@{sim.url}{teacher_options}"
        created = create_job(
            get_engine(url),
            GenerateParams(corpus="gsm8k", teachers=[spec], modes=modes, chunk_size=chunk_size),
        )
        groups = {
            "workers": [p.pid for p in procs],
            "simulator": [sim.process.pid],
            "postgres": _postmaster(stack),
            "redis": [stack.redis.proc.pid],  # type: ignore[union-attr]
        }
        if warmup:  # imports, clients, sandboxes, connection pools: paid before the measure
            warm = create_job(
                get_engine(url),
                GenerateParams(corpus="warmup", teachers=[spec], modes=modes, chunk_size=chunk_size),
            )
            dispatcher = CeleryDispatcher(stack.redis.url())
            dispatcher.enqueue(warm.job_id, warm.chunks)
            dispatcher.close()
            wait_for(url, warm.job_id)
        profilers = _start_profilers(procs, profile_to) if profile_to is not None else []
        before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        stats_before = sim_stats(sim)
        start = time.perf_counter()
        dispatcher = CeleryDispatcher(stack.redis.url())
        dispatcher.enqueue(created.job_id, created.chunks)
        dispatcher.close()
        if sampler is not None:
            engine = get_engine(url)
            while True:
                with Session(engine) as session:
                    status = session.scalar(
                        select(GenerationJob.status).where(GenerationJob.id == created.job_id)
                    )
                sampler.append((time.perf_counter() - start, sim_stats(sim)["answered"]))
                if status not in ("queued", "running"):
                    break
                time.sleep(1.0)
        else:
            wait_for(url, created.job_id)
        seconds = time.perf_counter() - start
        split = {name: cpu_seconds(pids) - before[name] for name, pids in groups.items()}
        stats = sim_stats(sim)
        for profiler in profilers:  # py-spy writes its file on SIGINT
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
    total, valid = counts(url)
    if warmup:
        total, valid = total - WARMUP_PROBLEMS * len(modes), valid - WARMUP_PROBLEMS * len(modes)
    dispose_engines()
    return RunResult(
        label,
        total,
        valid,
        seconds,
        sum(split.values()),
        stats["requests"] - stats_before["requests"],
        stats["rate_limited"] - stats_before["rate_limited"],
        split,
    )


def _start_profilers(procs: list[subprocess.Popen[bytes]], out: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy sampling every worker pool process (the task processes), collapsed stacks. Only
    samples of the thread holding the GIL are kept (`--gil`): Python's CPU, not threads waiting
    on a socket (C code that releases the GIL, such as libpq's, is not seen)."""
    out.mkdir(parents=True, exist_ok=True)
    pool = [
        int(pid)
        for pid in os.listdir("/proc")
        if pid.isdigit()
        and Path(f"/proc/{pid}/stat").exists()
        and int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) in {p.pid for p in procs}
    ]
    spy = Path(sys.executable).with_name("py-spy")
    profilers = [
        subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--nonblocking",
             "--gil", "--output", str(out / f"pool-{pid}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pool
    ]  # fmt: skip
    time.sleep(1.0)  # attached
    return profilers


# Where a task process's CPU goes: a sample counts for a bucket when a frame of its stack matches.
PROFILE_BUCKETS = {
    "SQLAlchemy (build, compile, ORM)": ("sqlalchemy/",),
    "psycopg (query handling)": ("psycopg/",),
    "HTTP client (openai SDK, httpx, httpcore)": ("openai/", "httpx/", "httpcore/"),
    "sandbox round trips (parent side)": ("services/validation/sandbox/",),
    "parsing and answer matching": ("services/kpdd/", "services/validation/matching", "answers.py"),
    "rationale upserts": ("upsert_rationales",),
    "response cache lookups": ("find_replayable_call", "replayable_calls"),
    "ledger writes (claim, settle)": ("claim_call", "settle_claimed", "settle_call"),
    "closing problems": ("close_problems",),
}


def summarise_profile(folder: Path) -> None:
    """Share of the task processes' samples per bucket (inclusive) and the top functions (self)."""
    total = 0
    buckets = dict.fromkeys(PROFILE_BUCKETS, 0)
    own: dict[str, int] = {}
    for path in sorted(folder.glob("pool-*.txt")):
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            for name, needles in PROFILE_BUCKETS.items():
                if any(needle in stack for needle in needles):
                    buckets[name] += count
            leaf = stack.rsplit(";", 1)[-1]
            own[leaf] = own.get(leaf, 0) + count
    if not total:
        print("  profile: no samples (is py-spy installed in the venv?)")
        return
    print(f"  profile of the task processes: {total} samples")
    for name, count in buckets.items():
        print(f"    {100 * count / total:5.1f} %  {name}")
    print("  top functions by own samples:")
    for leaf, count in sorted(own.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {100 * count / total:5.1f} %  {leaf}")


def bench_profile(stack: Stack, problems: int, processes: int) -> None:
    """A distributed CoT+PoT run with py-spy on every task process, summarised by bucket."""
    folder = stack.tmp / f"profile-{datetime.now(UTC):%H%M%S}"
    print(
        f"profile: {problems} problems x CoT+PoT, 2 workers x {processes} processes, "
        "py-spy at 250 Hz on the thread holding the GIL"
    )
    run = distributed_run(
        stack,
        "kpdd under py-spy",
        problems=problems,
        modes=["cot", "pot"],
        worker_count=2,
        threads=16,
        processes=processes,
        profile_to=folder,
    )
    show(run)
    summarise_profile(folder)
    print(f"  collapsed stacks: {folder}")


def _postmaster(stack: Stack) -> list[int]:
    pidfile = stack.pg.datadir / "postmaster.pid"
    return [int(pidfile.read_text().splitlines()[0])]


def sequential_baseline(stack: Stack, problems: int, modes: list[str]) -> RunResult:
    """One call at a time, in one process: the research-script way, same code path."""
    url = stack.fresh_database(problems)
    with simulator() as sim:
        engine = get_engine(url)
        created = create_job(
            engine,
            GenerateParams(
                corpus="gsm8k", teachers=[f"sim:gold@{sim.url}"], modes=modes, chunk_size=problems
            ),
        )
        roots = [os.getpid(), sim.process.pid, stack.redis.proc.pid, *_postmaster(stack)]  # type: ignore[union-attr]
        cpu_before = cpu_seconds(roots)
        start = time.perf_counter()
        generator = Generator(
            engine, lambda spec: build_client(spec, database_url=url), threads=1, sandbox_parallelism=1
        )
        for chunk in created.chunks:
            generator.process_chunk(created.job_id, chunk)
        generator.close()
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(roots) - cpu_before
    total, valid = counts(url)
    dispose_engines()
    return RunResult("baseline: sequential, 1 process", total, valid, seconds, cpu, total, 0)


def show(result: RunResult) -> None:
    print(
        f"  {result.label:<46} {result.valid:>6} valid / {result.rationales:<6} in {result.seconds:6.1f} s"
        f"  = {result.rate:7.1f} valid/s   {result.cpu_ms_per_rationale:5.2f} CPU-ms/rationale"
        f"   sim requests {result.sim_requests}, 429s {result.sim_429}"
    )
    if result.cpu_split:
        per = ", ".join(
            f"{k} {1000 * v / max(1, result.rationales):.2f}" for k, v in result.cpu_split.items()
        )
        print(f"  {'':<46} CPU-ms/rationale by process: {per}")


def bench_throughput(stack: Stack, problems: int, baseline_problems: int, processes: int) -> None:
    print(
        f"throughput: {problems} GSM8K problems x CoT+PoT, zero latency, "
        f"2 workers x {processes} processes x 16 threads"
    )
    fast = distributed_run(
        stack,
        f"kpdd: 2 workers x {processes} processes",
        problems=problems,
        modes=["cot", "pot"],
        worker_count=2,
        threads=16,
        processes=processes,
    )
    show(fast)
    base = sequential_baseline(stack, baseline_problems, ["cot", "pot"])
    show(base)
    print(f"  ratio kpdd / baseline: {fast.rate / base.rate:.1f}x")


def bench_ratelimit(stack: Stack, rpm: int, seconds: int) -> None:
    problems = int(rpm / 60 * seconds)
    print(
        f"rate limit: {rpm} requests/min shared by 2 workers x 16 threads, simulator enforcing {rpm} rpm, "
        f"{problems} requests"
    )
    samples: list[tuple[float, int]] = []
    result = distributed_run(
        stack,
        f"kpdd: 2 workers, limit {rpm} rpm",
        problems=problems,
        modes=["cot"],
        worker_count=2,
        threads=16,
        sim_args=("--rpm", str(rpm)),
        teacher_options=f",rpm={rpm}",
        chunk_size=8,
        sampler=samples,
    )
    show(result)
    # Steady state: skip the first and last 5 s (start-up burst, tail of the last chunks).
    inner = [(t, n) for t, n in samples if 5 <= t <= samples[-1][0] - 5]
    if len(inner) >= 2:
        (t0, n0), (t1, n1) = inner[0], inner[-1]
        steady = (n1 - n0) / (t1 - t0) * 60
        print(f"  steady-state rate {steady:.1f} rpm over {t1 - t0:.0f} s = {steady / rpm:.3f} of the limit")
    overall = result.sim_requests / result.seconds * 60
    print(f"  whole run: {overall:.1f} rpm = {overall / rpm:.3f} of the limit; 429s seen: {result.sim_429}")


def bench_scaling(stack: Stack, latency_only: bool = False) -> None:
    if not latency_only:
        bench_scaling_processes(stack)
    bench_scaling_latency(stack)


def bench_scaling_processes(stack: Stack) -> None:
    print("scaling at zero latency: 2000 problems x CoT, 16 threads per worker")
    for count in (1, 2):
        show(
            distributed_run(
                stack,
                f"{count} worker process(es)",
                problems=2000,
                modes=["cot"],
                worker_count=count,
                threads=16,
            )
        )


def bench_scaling_latency(stack: Stack) -> None:
    """Calls in flight per process are min(threads, work items of one chunk): chunks are sized
    to the thread count here, as the README advises."""
    cap = 1200
    print(f"scaling with 2 s latency per call: 1 worker process, limiter at {cap} rpm (20/s)")
    for threads in (1, 4, 16, 64):
        expected = min(threads / 2.0, cap / 60)
        problems = max(20, int(expected * 25))
        show(
            distributed_run(
                stack,
                f"{threads} threads (ideal {expected:.1f}/s)",
                problems=problems,
                modes=["cot"],
                worker_count=1,
                threads=threads,
                sim_args=("--latency-ms", "2000", "--latency-dist", "fixed"),
                teacher_options=f",rpm={cap}",
                chunk_size=threads,
            )
        )
    # One process works one chunk at a time, so a chunk's slowest call delays the next chunk;
    # two processes overlap chunks and reach the limiter's cap.
    show(
        distributed_run(
            stack,
            f"2 processes x 32 threads (ideal {cap / 60:.1f}/s)",
            problems=int(cap / 60 * 25),
            modes=["cot"],
            worker_count=1,
            threads=32,
            processes=2,
            sim_args=("--latency-ms", "2000", "--latency-dist", "fixed"),
            teacher_options=f",rpm={cap}",
            chunk_size=32,
        )
    )


def embedded_run(stack: Stack, label: str, problems: int, modes: list[str], threads: int = 16) -> RunResult:
    """The embedded default's way (`kpdd generate` without a broker): every chunk in this
    process, 16 threads, against Postgres; CPU of this process (with its sandbox), the
    simulator and Postgres."""
    url = stack.fresh_database(problems)
    with simulator() as sim:
        engine = get_engine(url)
        created = create_job(
            engine,
            GenerateParams(corpus="gsm8k", teachers=[f"sim:gold@{sim.url}"], modes=modes, chunk_size=64),
        )
        generator = Generator(engine, lambda spec: build_client(spec, database_url=url), threads=threads)
        warm = create_job(
            engine,
            GenerateParams(corpus="warmup", teachers=[f"sim:gold@{sim.url}"], modes=modes, chunk_size=64),
        )
        for chunk in warm.chunks:  # imports, clients, the sandbox, connections: before the measure
            generator.process_chunk(warm.job_id, chunk)
        roots = [os.getpid(), sim.process.pid, *_postmaster(stack)]
        cpu_before = cpu_seconds(roots)
        own_before = _own_cpu()
        start = time.perf_counter()
        for chunk in created.chunks:
            generator.process_chunk(created.job_id, chunk)
        generator.close()
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(roots) - cpu_before
        # This process's own CPU includes the benchmark's bookkeeping; /proc counts it the same.
        split = {"kpdd process (with sandbox)": _own_cpu() - own_before}
        split["simulator + postgres"] = cpu - split["kpdd process (with sandbox)"]
    total, valid = counts(url)
    total, valid = total - WARMUP_PROBLEMS * len(modes), valid - WARMUP_PROBLEMS * len(modes)
    dispose_engines()
    return RunResult(label, total, valid, seconds, cpu, total, 0, split)


def _own_cpu() -> float:
    """This process's CPU and its reaped children's (the sandbox fork-server once closed)."""
    mine, children = os.times()[:2], os.times()[2:4]
    return sum(mine) + sum(children)


def bench_cpu(stack: Stack, problems: int, processes: int) -> None:
    """Whole-system CPU-ms per validated rationale, CoT only, PoT only and both, distributed and
    embedded, every process counted (module doc: `cpu_seconds`)."""
    print(
        f"CPU per rationale: {problems} GSM8K problems, zero latency, "
        f"2 workers x {processes} processes x 16 threads"
    )
    results = []
    for modes in (["cot"], ["pot"], ["cot", "pot"]):
        name = "+".join(modes)
        run = distributed_run(
            stack,
            f"distributed {name}",
            problems=problems,
            modes=modes,
            worker_count=2,
            threads=16,
            processes=processes,
            warmup=True,
        )
        show(run)
        results.append(run)
    for modes in (["cot"], ["pot"]):
        run = embedded_run(stack, f"embedded {'+'.join(modes)}", problems // 2, modes)
        show(run)
        results.append(run)
    print("  summary (whole-system CPU-ms per validated rationale):")
    for run in results:
        per_valid = 1000 * run.cpu_s / max(1, run.valid)
        print(f"    {run.label:<22} {per_valid:6.2f} CPU-ms/valid   {run.rate:7.1f} valid/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "which", choices=("throughput", "cpu", "profile", "ratelimit", "scaling", "latency", "all")
    )
    parser.add_argument("--problems", type=int, default=3000)
    parser.add_argument("--baseline-problems", type=int, default=150)
    parser.add_argument("--processes", type=int, default=2, help="processes per worker (throughput)")
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--seconds", type=int, default=70)
    args = parser.parse_args()
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    stack = Stack()
    try:
        if args.which in ("throughput", "all"):
            bench_throughput(stack, args.problems, args.baseline_problems, args.processes)
        if args.which in ("cpu", "all"):
            bench_cpu(stack, args.problems, args.processes)
        if args.which == "profile":
            bench_profile(stack, args.problems, args.processes)
        if args.which in ("ratelimit", "all"):
            bench_ratelimit(stack, args.rpm, args.seconds)
        if args.which in ("scaling", "latency", "all"):
            bench_scaling(stack, latency_only=args.which == "latency")
    finally:
        stack.close()


if __name__ == "__main__":
    main()
