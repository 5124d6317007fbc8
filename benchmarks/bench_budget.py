"""How much of a job's budget is used before it stops as `budget_exhausted`.

A budgeted CoT job over GSM8K train problems runs in-process (one `Generator`, 16 threads,
chunks of 16, the way `kpdd generate` runs without a broker) against the teacher simulator over
HTTP, on a fresh database of a private PostgreSQL server for every run (no run replays another's
calls). The simulator's model `sim:gold` is priced like a large model ($2.50 in, $10 out per
million tokens), so one rationale costs about $0.004. For each budget the fraction used is
spent / budget when the job stops; the baseline in the same run is the rule before issue 10
(`BudgetPolicy.upper_bound()`: every rationale reserves its upper bound, `max_tokens` out, and
the first reservation that does not fit stops the job).

    .venv/bin/python -m benchmarks.bench_budget [--budgets 0.10 1.00] [--problems 600]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from db.engine import dispose_engines, get_engine
from db.migrate import upgrade
from db.models import GenerationJob, TeacherCall
from services.config import get_settings
from services.corpora.gsm8k import GSM8KLoader
from services.corpora.ingest import ingest_corpus
from services.generation.execute import Generator
from services.generation.jobs import create_job
from services.generation.params import GenerateParams
from services.teachers.registry import build_client
from services.teachers.simulator import SimulatorConfig, run_in_thread
from services.teachers.simulator.bank import CorpusSource
from tests.servers import PostgresServer

REPO = Path(__file__).resolve().parent.parent
GSM8K_TRAIN = REPO.parent / "shared" / "datasets" / "gsm8k" / "train.jsonl"
PRICE = {"input": 2.5, "output": 10.0}  # dollars per million tokens


@dataclass(slots=True)
class Run:
    label: str
    budget: Decimal
    spent: Decimal
    ledger: Decimal
    calls: int
    status: str
    seconds: float

    @property
    def used(self) -> float:
        return float(self.spent / self.budget)


def _policies() -> list[tuple[str, object | None]]:
    """(label, policy) pairs: the policy in force and the old rule, when this code has both."""
    try:
        from services.generation.budget import BudgetPolicy
    except ImportError:  # the code before issue 10: one rule only
        return [("before issue 10 (this checkout's code)", None)]
    return [
        ("upper bound, stop at first miss (old rule)", BudgetPolicy.upper_bound()),
        ("kpdd", BudgetPolicy()),
    ]


class Bench:
    def __init__(self, problems: int) -> None:
        self.pg = PostgresServer()
        self.pg.start()
        self.tmp = Path(tempfile.mkdtemp(prefix="kpdd-bench-budget-"))
        self.problems = problems
        self.subset = self.tmp / "gsm8k.jsonl"
        lines = GSM8K_TRAIN.read_text(encoding="utf-8").splitlines()[:problems]
        self.subset.write_text("\n".join(lines) + "\n", encoding="utf-8")
        prices = self.tmp / "prices.json"
        prices.write_text(json.dumps({"models": {"sim:gold": PRICE}}))
        for key in [k for k in os.environ if k.startswith("KPDD_")]:
            del os.environ[key]
        os.environ["KPDD_PRICES_FILE"] = str(prices)
        os.environ["KPDD_DATA_DIR"] = str(self.tmp / "data")
        get_settings.cache_clear()
        self.sim = run_in_thread(
            SimulatorConfig(
                corpora=[CorpusSource("gsm8k", GSM8K_TRAIN)],
                latency_ms=60,
                latency_jitter_ms=20,
                latency_dist="uniform",
            )
        )
        self.runs = 0

    def fresh_database(self) -> str:
        self.runs += 1
        name = f"bench_budget_{self.runs}"
        engine = create_engine(self.pg.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        engine.dispose()
        url = self.pg.url(name)
        upgrade(url)
        ingest_corpus(get_engine(url), GSM8KLoader(self.subset), "g", "train")
        return url

    def run(self, label: str, budget: Decimal, policy: object | None) -> Run:
        url = self.fresh_database()
        os.environ["KPDD_DATABASE_URL"] = url
        get_settings.cache_clear()
        engine = get_engine(url, pool_size=24)
        params = GenerateParams(
            corpus="g", teachers=[f"sim:gold@{self.sim.url}"], modes=["cot"], budget_usd=budget, chunk_size=16
        )
        created = create_job(engine, params)
        extra = {} if policy is None else {"budget_policy": policy}
        generator = Generator(
            engine,
            lambda spec: build_client(spec, database_url=url),
            threads=16,
            **extra,  # type: ignore[arg-type]
        )
        start = time.perf_counter()
        try:
            for chunk in created.chunks:
                generator.process_chunk(created.job_id, chunk)
        finally:
            generator.close()
        seconds = time.perf_counter() - start
        with Session(engine) as session:
            job = session.get(GenerationJob, created.job_id)
            assert job is not None
            ledger = session.scalar(select(func.coalesce(func.sum(TeacherCall.cost_usd), 0)))
            calls = int(session.scalar(select(func.count()).select_from(TeacherCall)) or 0)
            run = Run(label, budget, job.spent_usd, Decimal(str(ledger)), calls, job.status, seconds)
        dispose_engines()
        return run

    def close(self) -> None:
        self.sim.close()
        self.pg.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budgets", nargs="+", default=["0.10", "1.00"])
    parser.add_argument("--problems", type=int, default=600)
    args = parser.parse_args()
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"budgeted CoT jobs over {args.problems} GSM8K problems, 16 threads, chunks of 16, "
        f"sim:gold priced ${PRICE['input']}/${PRICE['output']} per million tokens in/out"
    )
    bench = Bench(args.problems)
    try:
        for budget_text in args.budgets:
            budget = Decimal(budget_text)
            for label, policy in _policies():
                run = bench.run(label, budget, policy)
                print(
                    f"  budget ${budget}: {label:<45} used {run.used:6.1%}  (spent ${run.spent:.6f}, "
                    f"ledger ${run.ledger:.6f}, {run.calls} calls, {run.status}, {run.seconds:.1f} s)"
                )
                assert run.spent <= budget, "the budget was exceeded"
    finally:
        bench.close()


if __name__ == "__main__":
    main()
