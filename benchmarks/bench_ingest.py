"""Ingestion benchmark: a generated 1,000,000-problem JSON-lines file into Postgres.

Measures `kpdd ingest` exactly as a user runs it (a child process, so its peak memory is the
child's own max RSS), then a re-ingest of the same file (idempotent: every row unchanged), and a
baseline in the same run: plain SQLAlchemy ORM inserts (`session.add_all` in batches) of the same
records on a prefix of the file. Prints problems/s, peak memory and the ratio.

Postgres: a private server started from the machine's binaries (as the test suite does), or the
database named by --database-url.

    .venv/bin/python -m benchmarks.bench_ingest [--problems 1000000] [--baseline-problems 100000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from benchmarks.common import postgres_database, run_child
from db.models import Corpus, Problem
from services.validation.numbers import normalise_gold

REPO = Path(__file__).resolve().parent.parent


def generate(path: Path, n: int) -> None:
    """GSM8K-shaped records: a question, a worked solution with calculator notes, `#### N`."""
    with path.open("wb") as fh:
        for i in range(n):
            a, b = i % 97 + 3, i % 13 + 2
            record = {
                "id": f"gen-{i:07d}",
                "question": f"A shop sells {a} boxes of {b} pencils each on day {i}. "
                "How many pencils is that?",
                "answer": f"They sold {a} * {b} = <<{a}*{b}={a * b}>>{a * b} pencils.\n#### {a * b:,}",
            }
            fh.write(orjson.dumps(record) + b"\n")


def run_kpdd_ingest(path: Path, url: str, corpus: str) -> tuple[float, float, dict[str, object]]:
    """Run `kpdd ingest` as a child; returns (seconds, the child's own peak RSS in MB, report)."""
    seconds, peak, out = run_child(
        ["-m", "services.cli.main", "ingest", "gsm8k", str(path), "--corpus", corpus, "--json"],
        {"KPDD_DATABASE_URL": url},
    )
    return seconds, peak, orjson.loads(out)


def run_baseline(path: Path, url: str, n: int) -> float:
    """Plain ORM inserts, batches of 5000 objects per flush, one transaction."""
    engine = create_engine(url)
    start = time.perf_counter()
    with Session(engine) as session, session.begin():
        corpus = Corpus(name="baseline", format="gsm8k")
        session.add(corpus)
        session.flush()
        batch = []
        with path.open("rb") as fh:
            for i, line in enumerate(fh):
                if i >= n:
                    break
                rec = orjson.loads(line)
                gold_raw = rec["answer"].rpartition("####")[2].strip()
                gold = normalise_gold(gold_raw)
                batch.append(
                    Problem(
                        corpus_id=corpus.id,
                        split="train",
                        source_id=str(i),
                        question=rec["question"],
                        gold_answer=gold_raw,
                        gold_kind=gold.kind,
                        gold_normalised=gold.value,
                        worked_solution=rec["answer"],
                        content_hash=hashlib.sha256(rec["question"].encode()).hexdigest(),
                    )
                )
                if len(batch) >= 5000:
                    session.add_all(batch)
                    session.flush()
                    batch = []
        session.add_all(batch)
    seconds = time.perf_counter() - start
    engine.dispose()
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=1_000_000)
    parser.add_argument("--baseline-problems", type=int, default=100_000)
    parser.add_argument("--database-url", help="an empty Postgres database (default: a private server)")
    args = parser.parse_args()

    with postgres_database(args.database_url) as url, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "problems.jsonl"
        t0 = time.perf_counter()
        generate(path, args.problems)
        size_mb = path.stat().st_size / 1e6
        print(f"generated {args.problems:,} problems ({size_mb:.0f} MB) in {time.perf_counter() - t0:.1f} s")

        seconds, peak_mb, report = run_kpdd_ingest(path, url, "bench")
        assert report["inserted"] == args.problems, report
        rate = args.problems / seconds
        print(f"kpdd ingest:     {rate:>10,.0f} problems/s  ({seconds:.1f} s, peak RSS {peak_mb:.0f} MB)")

        seconds2, peak2, report2 = run_kpdd_ingest(path, url, "bench")
        assert report2["unchanged"] == args.problems, report2
        print(
            f"re-ingest (no-op): {args.problems / seconds2:>8,.0f} problems/s  ({seconds2:.1f} s, "
            f"peak RSS {peak2:.0f} MB)"
        )

        base_rate = run_baseline(path, url, args.baseline_problems)
        print(
            f"baseline ORM:    {base_rate:>10,.0f} problems/s  (session.add_all, "
            f"{args.baseline_problems:,} problems)"
        )
        print(f"ratio kpdd/baseline: {rate / base_rate:.1f}x")
        print(
            f"machine: {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        )


if __name__ == "__main__":
    main()
