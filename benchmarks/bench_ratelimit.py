"""Tokens-per-minute fidelity of the shared rate limiter: achieved tokens per minute over the limit.

Worker threads (16 by default) send KPDD CoT prompts for GSM8K train problems through the
worker runtime's rate-limited clients (`workers.runtime.limited_client_factory`: the real
`before_attempt` / `after_response` hooks, the real Redis Lua limiter on a private Redis server)
to the teacher simulator, run as its own process with 300 ms of latency and enforcing the same
tokens-per-minute limit with 429s. Each run lasts a short window; the achieved rate counts the
tokens the simulator reported (prompt + completion) of the answers received between 5 s after
the start and the end, per minute, over the limit.

Two runs in the same invocation: with settling (the estimate, prompt + `max_tokens`, replaced
by the reported usage after each answer: what workers do) and, as the baseline, without it
(each request stays charged at its estimate, as before issue 10).

    .venv/bin/python -m benchmarks.bench_ratelimit [--tpm 300000 --seconds 40 --threads 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis

from services.config import get_settings
from services.kpdd.prompts import render_prompt
from services.teachers.base import TeacherRequest
from services.teachers.simulator.process import spawn_simulator
from services.teachers.spec import parse_spec
from tests.servers import RedisServer
from workers.ratelimit import RateLimiter
from workers.runtime import estimated_tokens, limited_client_factory

REPO = Path(__file__).resolve().parent.parent
GSM8K_TRAIN = REPO.parent / "shared" / "datasets" / "gsm8k" / "train.jsonl"
WARMUP_S = 5.0


@dataclass(slots=True)
class Run:
    label: str
    limit: float
    seconds: float
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, used, estimated)
    rate_limited: int = 0
    failures: int = 0

    def achieved_tpm(self, since: float = WARMUP_S) -> float:
        tokens = sum(used for t, used, _ in self.samples if t >= since)
        return tokens / (self.seconds - since) * 60

    @property
    def estimate_ratio(self) -> float:
        used = sum(u for _, u, _ in self.samples)
        estimated = sum(e for _, _, e in self.samples)
        return used / estimated if estimated else 0.0


def _questions(count: int) -> list[str]:
    import json

    out = []
    with GSM8K_TRAIN.open(encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line)["question"])
            if len(out) == count:
                break
    return out


def run(label: str, redis_url: str, tpm: float, seconds: float, threads: int, settle: bool) -> Run:
    redis.Redis.from_url(redis_url).flushall()
    limiter = RateLimiter(redis.Redis.from_url(redis_url))
    sim = spawn_simulator(
        [
            "--corpus",
            f"gsm8k:{GSM8K_TRAIN}",
            "--latency-ms",
            "300",
            "--latency-dist",
            "fixed",
            "--tpm",
            str(tpm),
        ]
    )
    result = Run(label, tpm, seconds)
    questions = _questions(500)
    lock = threading.Lock()
    try:
        spec = parse_spec(f"sim:gold@{sim.url},tpm={tpm:g}")
        client = limited_client_factory(limiter, "sqlite://", settle=settle)(spec)
        start = time.monotonic()
        end = start + seconds

        def work(offset: int) -> None:
            n = offset
            while time.monotonic() < end:
                request = TeacherRequest(render_prompt(questions[n % len(questions)], "cot"), sample_index=n)
                n += threads
                got = client.call(request)
                now = time.monotonic() - start
                with lock:
                    if got.response is None:
                        result.failures += 1
                    elif now <= seconds:
                        used = (got.response.tokens_in or 0) + (got.response.tokens_out or 0)
                        result.samples.append((now, used, estimated_tokens(request, spec)))

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        client.close()
        result.rate_limited = int(httpx.get(f"{sim.url}/_sim/stats").json()["rate_limited"])
    finally:
        sim.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tpm", type=float, default=300_000)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    for key in [k for k in os.environ if k.startswith("KPDD_")]:
        del os.environ[key]
    get_settings.cache_clear()
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"tokens-per-minute fidelity: limit {args.tpm:,.0f} tpm shared by {args.threads} threads, "
        f"{args.seconds:.0f} s per run (the first {WARMUP_S:.0f} s not counted), simulator at 300 ms "
        f"enforcing the same tpm"
    )
    server = RedisServer()
    server.start()
    try:
        runs = [
            run("settled after each answer (kpdd)", server.url(), args.tpm, args.seconds, args.threads, True),
            run("estimate kept (baseline)", server.url(), args.tpm, args.seconds, args.threads, False),
        ]
    finally:
        server.close()
    for r in runs:
        achieved = r.achieved_tpm()
        print(
            f"  {r.label:<34} {achieved:10,.0f} tpm = {achieved / r.limit:.3f} of the limit "
            f"(whole run {r.achieved_tpm(0) / r.limit:.3f}); {len(r.samples)} answers, "
            f"used/estimated tokens {r.estimate_ratio:.2f}, 429s {r.rate_limited}, failures {r.failures}"
        )


if __name__ == "__main__":
    main()
