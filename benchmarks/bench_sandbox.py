"""Sandbox throughput: real-looking PoT programs through `Sandbox.run_many` vs `python -c`.

Programs are derived from GSM8K's calculator notes (`services.corpora.gsm8k.program_from_solution`
on the train split), i.e. the short arithmetic programs a teacher writes for KPDD-PoT. Each
is run through the sandbox (warm fork-servers, every isolation layer on) and checked against its
gold answer, so a fast but wrong sandbox cannot score.

Baselines, measured in the same run on a prefix of the same programs: a fresh `python -c` per
program (no isolation at all), one at a time (the naive loop) and `--parallelism` at a time (the
same concurrency the sandbox gets). A baseline figure is its programs divided by its own wall time.

CPU per program, split three ways over the timed batch: the fork-servers' own (forking, watching,
reaping, replying), their children's (the programs' processes: lock-down, run, report, exit; from
the servers' `wait4`, via `Sandbox.cpu_usage()`, since this process never sees it) and this
process's (encoding requests, decoding replies). The sum bounds the rate: 2 cores give at most
2,000 / (ms per program) programs/s.

    .venv/bin/python -m benchmarks.bench_sandbox [--programs 3000] [--baseline-programs 300]
        [--parallelism N] [--datasets DIR] [--json out.json]

The datasets folder defaults to $KPDD_DATASETS_DIR, else `../shared/datasets` next to the repo.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

from services.corpora.base import SourceProblem
from services.corpora.gsm8k import GSM8KLoader, program_from_solution
from services.validation.numbers import parse_number
from services.validation.sandbox import ExecutionResult, Sandbox, SandboxLimits

REPO = Path(__file__).resolve().parent.parent


def default_datasets() -> Path:
    env = os.environ.get("KPDD_DATASETS_DIR")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


def load_programs(datasets: Path, n: int) -> list[tuple[str, Fraction]]:
    """(program, gold) pairs from GSM8K train, in file order, repeated if `n` exceeds the file."""
    path = datasets / "gsm8k" / "train.jsonl"
    pairs: list[tuple[str, Fraction]] = []
    for item in GSM8KLoader(path).iter_problems():
        if not isinstance(item, SourceProblem) or not item.worked_solution or item.gold_answer is None:
            continue
        gold = parse_number(item.gold_answer)
        if gold is None:
            continue
        pairs.append((program_from_solution(item.worked_solution, item.gold_answer), gold))
        if len(pairs) >= n:
            break
    if not pairs:
        raise SystemExit(f"{path}: no GSM8K problems read; pass --datasets DIR")
    while len(pairs) < n:
        pairs.extend(pairs[: n - len(pairs)])
    return pairs


def correct(result: ExecutionResult, gold: Fraction) -> bool:
    if result.answer is None:
        return False
    value = parse_number(result.answer.value)
    # Programs divide with `/`, so a whole answer may come back as 72.0; 1e-9 tolerance for floats.
    scale = abs(gold) if abs(gold) > 1 else Fraction(1)
    return value is not None and abs(value - gold) <= Fraction(1, 10**9) * scale


def run_baseline_one(program: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", program + "\nprint(repr(ans))\n"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout.strip()


def baseline(programs: list[str], workers: int) -> float:
    """Programs per second of a fresh `python -c` per program, `workers` at a time."""
    start = time.perf_counter()
    if workers == 1:
        for program in programs:
            run_baseline_one(program)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run_baseline_one, programs))
    return len(programs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--programs", type=int, default=3000, help="programs through the sandbox")
    parser.add_argument("--baseline-programs", type=int, default=300, help="programs through each baseline")
    parser.add_argument("--parallelism", type=int, default=None, help="default: usable CPUs")
    parser.add_argument("--datasets", type=Path, default=default_datasets())
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    pairs = load_programs(args.datasets, args.programs)
    programs = [p for p, _ in pairs]
    limits = SandboxLimits(timeout_s=5.0)

    started = time.perf_counter()
    with Sandbox(limits, parallelism=args.parallelism) as sandbox:
        startup_s = time.perf_counter() - started
        sandbox.run_many(programs[:50])  # warm the page cache and the servers' allocators
        cpu_before, own_before = sandbox.cpu_usage(), resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        results = sandbox.run_many(programs)
        sandbox_s = time.perf_counter() - start
        cpu_after, own_after = sandbox.cpu_usage(), resource.getrusage(resource.RUSAGE_SELF)
        parallelism = sandbox.parallelism
        isolation = sandbox.isolation
    sandbox_rate = len(programs) / sandbox_s
    per_program_ms = 1000 / len(programs)
    server_ms = sum(cpu_after[n].server_s - cpu_before[n].server_s for n in cpu_after) * per_program_ms
    children_ms = sum(cpu_after[n].children_s - cpu_before[n].children_s for n in cpu_after) * per_program_ms
    host_ms = (
        own_after.ru_utime + own_after.ru_stime - own_before.ru_utime - own_before.ru_stime
    ) * per_program_ms
    cpu_ms = {
        "fork_server": round(server_ms, 3),
        "children": round(children_ms, 3),
        "host": round(host_ms, 3),
        "total": round(server_ms + children_ms + host_ms, 3),
    }
    child_cpu = sorted(r.cpu_ms for r in results if r.cpu_ms is not None)
    kinds = Counter(r.kind.value for r in results)
    right = sum(correct(r, gold) for r, (_, gold) in zip(results, pairs, strict=True))

    subset = programs[: args.baseline_programs]
    serial_rate = baseline(subset, 1)
    parallel_rate = baseline(subset, parallelism)

    figures = {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": f"{platform.node()}, {len(os.sched_getaffinity(0))} usable CPUs, "
        f"Linux {platform.release()}, Python {platform.python_version()}",
        "programs": len(programs),
        "parallelism": parallelism,
        "sandbox_startup_s": round(startup_s, 2),
        "sandbox_programs_per_s": round(sandbox_rate, 1),
        "sandbox_kinds": dict(kinds),
        "sandbox_correct": right,
        "sandbox_cpu_ms_per_program": cpu_ms,
        "child_cpu_ms_median": child_cpu[len(child_cpu) // 2] if child_cpu else None,
        "isolation_full": isolation.full,
        "baseline_programs": len(subset),
        "baseline_serial_programs_per_s": round(serial_rate, 1),
        "baseline_parallel_programs_per_s": round(parallel_rate, 1),
        "ratio_vs_serial": round(sandbox_rate / serial_rate, 1),
        "ratio_vs_parallel": round(sandbox_rate / parallel_rate, 1),
    }
    print(f"{figures['date']}  {figures['machine']}")
    print(f"programs: {len(programs)} derived from GSM8K train calculator notes; parallelism {parallelism}")
    print(f"sandbox start (both fork-servers, sympy pre-imported): {startup_s:.2f} s")
    print(
        f"sandbox:                  {sandbox_rate:>8,.0f} programs/s  ({sandbox_s:.2f} s; "
        f"kinds {dict(kinds)}; {right}/{len(programs)} equal to gold; full isolation: {isolation.full})"
    )
    print(
        f"CPU per program: {cpu_ms['total']:.2f} ms = fork-server {cpu_ms['fork_server']:.2f} + "
        f"children {cpu_ms['children']:.2f} + host {cpu_ms['host']:.2f} "
        f"(ceiling on {len(os.sched_getaffinity(0))} CPUs: "
        f"{1000 * len(os.sched_getaffinity(0)) / cpu_ms['total']:,.0f} programs/s); "
        f"median child {figures['child_cpu_ms_median']} ms"
    )
    n = len(subset)
    print(f"baseline python -c, serial:    {serial_rate:>6,.1f} programs/s  ({n} programs)")
    print(f"baseline python -c, {parallelism} at once: {parallel_rate:>6,.1f} programs/s  ({n} programs)")
    print(f"ratio sandbox / serial baseline:   {sandbox_rate / serial_rate:.1f}x")
    print(f"ratio sandbox / parallel baseline: {sandbox_rate / parallel_rate:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
