"""Teacher-simulator throughput: requests/s at zero latency under many concurrent clients.

The simulator runs as a child process exactly as a user starts it (`python -m
services.teachers.simulator --corpus gsm8k:... --port 0 [--workers N]`). Load comes from
separate client processes, each running an aiohttp client with C keep-alive connections that
POST real KPDD prompts (rendered for GSM8K train questions, about 3 KB each) in a closed loop for
D seconds. Every response is checked for status 200 and counted.

Baseline, measured in the same run with the same clients: a bare aiohttp low-level server that
returns one fixed JSON body, i.e. the HTTP stack alone on this machine. The ratio says how much
of the HTTP stack's capacity the simulator keeps after its real work (auth, JSON, prompt reading,
rationale lookup, fault draw, response body).

Clients and servers share the machine's cores, so requests/s is a lower bound for the server; the
server's own CPU time per request (from /proc, all its processes) is also printed: it does not
depend on how busy the machine is, and 1e6 / it is the rate one free core would sustain.
The targets are measured in interleaved rounds and the medians reported, with the ratio taken
per round against that round's baseline, because a shared machine's load drifts.

    .venv/bin/python -m benchmarks.bench_simulator [--duration 5] [--clients 2] [--concurrency 32]
        [--workers 1 2] [--rounds 3] [--provider openai|anthropic] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson

from services.kpdd.prompts import render_prompt
from services.teachers.simulator import spawn_simulator

REPO = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("KPDD_DATASETS_DIR", REPO.parent / "shared" / "datasets"))
GSM8K_TRAIN = DATASETS / "gsm8k" / "train.jsonl"

_BASELINE_SERVER = """
import asyncio, socket, sys
from aiohttp import web
BODY = (b'{"id":"x","object":"chat.completion","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}')
async def handle(request):
    await request.read()
    return web.Response(body=BODY, content_type="application/json")
async def main():
    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(4096)
    server = await asyncio.get_running_loop().create_server(
        web.Server(handle, access_log=None), sock=sock, backlog=4096)
    print(sock.getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


@dataclass(slots=True)
class Result:
    name: str
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu_us: float  # server CPU time (all its processes) per request

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def request_bodies(provider: str, n: int) -> list[bytes]:
    lines = GSM8K_TRAIN.read_bytes().splitlines()
    bodies = []
    for i in range(n):
        question = orjson.loads(lines[i * 37 % len(lines)])["question"]
        prompt = render_prompt(question, "pot" if i % 2 else "cot")
        if provider == "openai":
            body = {"model": "gold", "messages": prompt.openai_messages(), "max_completion_tokens": 1024}
        else:
            body = {"model": "gold", "system": prompt.system, "messages": prompt.messages, "max_tokens": 1024}
        bodies.append(orjson.dumps(body))
    return bodies


async def _load(
    url: str, bodies: list[bytes], concurrency: int, duration: float
) -> tuple[int, int, list[float]]:
    headers = {
        "Authorization": "Bearer bench",
        "x-api-key": "bench",
        "anthropic-version": "2023-06-01",
        "Content-Type": "application/json",
    }
    done = errors = 0
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker(k: int) -> None:
            nonlocal done, errors
            i = k
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                async with session.post(url, data=bodies[i % len(bodies)]) as response:
                    await response.read()
                    if response.status == 200:
                        done += 1
                    else:
                        errors += 1
                if done % 16 == 0:
                    latencies.append(time.perf_counter() - start)
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done, errors, latencies


def _client_process(args: tuple[str, list[bytes], int, float]) -> tuple[int, int, list[float]]:
    return asyncio.run(_load(*args))


def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` and its live children (workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if entry.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def drive(
    name: str, url: str, pid: int, bodies: list[bytes], clients: int, concurrency: int, duration: float
) -> Result:
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(clients) as pool:
        pool.map(_client_process, [(url, bodies, 4, 0.5)] * clients)  # connect, warm the caches
        cpu_start, start = server_cpu_s(pid), time.perf_counter()
        outputs = pool.map(_client_process, [(url, bodies, concurrency, duration)] * clients)
        seconds = time.perf_counter() - start
        cpu = server_cpu_s(pid) - cpu_start
    requests = sum(o[0] for o in outputs)
    errors = sum(o[1] for o in outputs)
    latencies = sorted(x for o in outputs for x in o[2]) or [0.0]
    return Result(
        name,
        requests,
        errors,
        max(seconds, duration),
        latencies[len(latencies) // 2] * 1000,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        cpu / max(1, requests) * 1e6,
    )


@contextlib.contextmanager
def baseline_server() -> Iterator[tuple[str, int]]:
    proc = subprocess.Popen([sys.executable, "-c", _BASELINE_SERVER], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}", proc.pid
    finally:
        proc.terminate()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per measurement")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=32, help="connections per client process")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="simulator worker counts")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    parser.add_argument("--provider", choices=("openai", "anthropic"), default="openai")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    bodies = request_bodies(args.provider, 200)
    path = "/v1/chat/completions" if args.provider == "openai" else "/v1/messages"
    print(f"date: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; load average before: {_loadavg()}"
    )
    print(
        f"command: {' '.join([Path(sys.executable).name, '-m', 'benchmarks.bench_simulator', *sys.argv[1:]])}"
    )
    print(
        f"load: {args.clients} client processes x {args.concurrency} keep-alive connections, "
        f"{args.duration:.0f} s per measurement, {args.rounds} interleaved rounds, "
        f"{args.provider} bodies of ~{sum(map(len, bodies)) // len(bodies)} bytes"
    )
    with contextlib.ExitStack() as stack:
        url, pid = stack.enter_context(baseline_server())
        targets = [("baseline: bare aiohttp server, fixed body", url, pid)]
        for workers in args.workers:
            sim_args = ["--corpus", f"gsm8k:{GSM8K_TRAIN}", "--workers", str(workers)]
            sim = stack.enter_context(spawn_simulator(sim_args))
            name = f"simulator, {workers} worker(s), {sim.problems} problems"
            targets.append((name, sim.url, sim.process.pid))
        rounds: list[list[Result]] = []
        for _ in range(args.rounds):
            rounds.append(
                [
                    drive(name, f"{url}{path}", pid, bodies, args.clients, args.concurrency, args.duration)
                    for name, url, pid in targets
                ]
            )
        for name, url, _pid in targets[1:]:
            with urllib.request.urlopen(f"{url}/_sim/stats") as response:
                stats = orjson.loads(response.read())
            served = sum(r.requests for rnd in rounds for r in rnd if r.name == name)
            assert stats["answered"] >= served and stats["requests"] == stats["answered"], (name, stats)

    print(f"load average after: {_loadavg()}")
    header = (
        f"{'':48} {'req/s':>7} {'(min-max)':>13} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'srv CPU us/req':>14}"
    )
    print(header)
    figures = []
    for i, (name, _url, _pid) in enumerate(targets):
        mine = [rnd[i] for rnd in rounds]
        rps = statistics.median(r.rps for r in mine)
        ratio = statistics.median(rnd[i].rps / rnd[0].rps for rnd in rounds)  # paired per round
        typical = sorted(mine, key=lambda r: r.rps)[len(mine) // 2]
        low, high = min(r.rps for r in mine), max(r.rps for r in mine)
        errors = sum(r.errors for r in mine)
        cpu_us = statistics.median(r.server_cpu_us for r in mine)
        print(
            f"{name:48} {rps:7.0f} {f'({low:.0f}-{high:.0f})':>13} {ratio:6.2f} "
            f"{typical.p50_ms:7.1f} {typical.p99_ms:7.1f} {errors:6d} {cpu_us:14.0f}"
        )
        figures.append(
            {
                "name": name,
                "rps_median": rps,
                "rps_min": low,
                "rps_max": high,
                "ratio": ratio,
                "server_cpu_us_per_request": cpu_us,
            }
        )
    print(
        "srv CPU us/req: server CPU time per answered request (all its processes); 1e6 / it is what one "
        "core would serve with no clients competing for it"
    )
    if args.json:
        args.json.write_bytes(
            orjson.dumps({"args": vars(args) | {"json": str(args.json)}, "results": figures})
        )


if __name__ == "__main__":
    main()
