"""CPU profile of a generation worker's chunk work, in one process: CPU-ms per rationale and the
top of a cProfile that covers every thread of the `Generator` (the chunk's thread and its
teacher-call pool).

    .venv/bin/python -m benchmarks.profile_chunk [--problems 500] [--mode cot] [--sqlite]
        [--threads 16] [--chunk-size 16] [--top 30] [--sort tottime] [--no-profile]

The database is a fresh private PostgreSQL (as the test suite starts it; `--database-url` for
another one) or, with `--sqlite`, a file in a temporary folder. The teacher simulator runs as its
own process at zero latency, so the figures are the worker side alone: `time.process_time` of
this process over the job's chunks (the sandbox of PoT programs runs in child processes and is
not counted). cProfile adds its own overhead: compare runs with the same flags, in the same
session, and use `--no-profile` for the plain CPU figure.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from benchmarks.common import postgres_database
from db.engine import dispose_engines, get_engine
from db.migrate import upgrade
from db.models import Rationale
from services.corpora.gsm8k import GSM8KLoader
from services.corpora.ingest import ingest_corpus
from services.generation.execute import Generator
from services.generation.jobs import create_job
from services.generation.params import GenerateParams
from services.teachers.registry import build_client
from services.teachers.simulator.process import spawn_simulator

REPO = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("KPDD_DATASETS_DIR", REPO.parent / "shared" / "datasets"))
GSM8K_TRAIN = DATASETS / "gsm8k" / "train.jsonl"


@contextmanager
def database(args: argparse.Namespace, tmp: Path) -> Iterator[str]:
    if args.sqlite:
        url = f"sqlite:///{tmp / 'kpdd.db'}"
        upgrade(url)
        yield url
        return
    with postgres_database(args.database_url, name="kpdd_profile_chunk") as url:
        yield url


class ProfiledPool(ThreadPoolExecutor):
    """A thread pool whose threads each run under their own cProfile (cProfile sees one thread)."""

    def __init__(self, max_workers: int, profiles: list[cProfile.Profile]) -> None:
        self._profiles = profiles
        self._profiles_lock = threading.Lock()
        super().__init__(max_workers=max_workers, initializer=self._start_profile)

    def _start_profile(self) -> None:
        profile = cProfile.Profile(time.thread_time)  # CPU, not wall time
        with self._profiles_lock:
            self._profiles.append(profile)
        profile.enable()


def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="kpdd-profile-chunk-"))
    subset = tmp / "gsm8k.jsonl"
    lines = GSM8K_TRAIN.read_text(encoding="utf-8").splitlines()[: args.problems]
    subset.write_text("\n".join(lines) + "\n", encoding="utf-8")
    modes = ["cot", "pot"] if args.mode == "both" else [args.mode]
    sim = spawn_simulator(["--corpus", f"gsm8k:{GSM8K_TRAIN}"])
    try:
        with database(args, tmp) as url:
            engine = get_engine(url, pool_size=args.threads + 4)
            ingest_corpus(engine, GSM8KLoader(subset), "gsm8k", "train")
            created = create_job(
                engine,
                GenerateParams(
                    corpus="gsm8k",
                    teachers=[f"sim:gold@{sim.url}"],
                    modes=modes,
                    stage_mode=args.stage_mode,
                    chunk_size=args.chunk_size,
                ),
            )
            generator = Generator(
                engine, lambda spec: build_client(spec, database_url=url), threads=args.threads
            )
            profiles: list[cProfile.Profile] = []
            if not args.no_profile:
                generator._pool.shutdown()
                generator._pool = ProfiledPool(args.threads, profiles)
                main = cProfile.Profile(time.thread_time)
                profiles.append(main)
                main.enable()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for chunk in created.chunks:
                generator.process_chunk(created.job_id, chunk)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            if not args.no_profile:
                main.disable()
            generator.close()
            with Session(engine) as session:
                rationales = int(session.scalar(select(func.count()).select_from(Rationale)) or 0)
                valid = int(session.scalar(select(func.count()).where(Rationale.verdict == "valid")) or 0)
            dispose_engines()
    finally:
        sim.close()
    database_kind = "sqlite" if args.sqlite else "postgres"
    print(
        f"{args.problems} problems x {'+'.join(modes)} ({args.stage_mode}), {database_kind}, "
        f"{args.threads} threads, chunks of {args.chunk_size}, profile {'off' if args.no_profile else 'on'}"
    )
    print(
        f"  {rationales} rationales ({valid} valid) in {wall:.1f} s wall, {cpu:.2f} s CPU = "
        f"{1000 * cpu / max(1, rationales):.2f} CPU-ms/rationale"
    )
    if profiles:
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        if args.save:
            stats.dump_stats(args.save)
        stats.sort_stats(args.sort).print_stats(args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--mode", choices=["cot", "pot", "both"], default="cot")
    parser.add_argument("--stage-mode", choices=["single", "staged"], default="single")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file instead of Postgres")
    parser.add_argument("--database-url", help="a Postgres database to use (migrated to head)")
    parser.add_argument("--no-profile", action="store_true", help="CPU time only, no cProfile")
    parser.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--save", help="write the merged pstats here (for snakeviz, pstats)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
