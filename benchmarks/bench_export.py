"""Export benchmark: 1,000,000 generated rationales exported from Postgres to a Parquet snapshot.

Builds a private PostgreSQL database (as the test suite does) holding 250,000 GSM8K-shaped
problems and 4 rationales each (CoT and PoT, 2 samples), generated inside the server with
`INSERT ... SELECT generate_series` so setup takes seconds. Then runs, each as a child process
so its peak memory is its own max RSS (`os.wait4`):

1. `kpdd export` with the defaults (valid only, both modes, end-to-end layout, Parquet);
2. `kpdd export` with every filter on (dedupe, cap 2, decontamination against GSM8K test, SVAMP,
   ASDiv and MultiArith, 10 % validation split, cascade layout);
3. a baseline measured in the same run: a naive export of the first `--baseline-rows` rationales
   (ORM objects loaded with `.all()`, converted to dicts, `pyarrow.Table.from_pylist`, one
   `write_table`).

Prints rows/s, peak RSS and the ratio against the baseline, and checks that a second default
export of the same database is byte-identical.

    .venv/bin/python -m benchmarks.bench_export [--problems 250000] [--baseline-rows 100000]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
from sqlalchemy import create_engine, text

from benchmarks.common import postgres_database, run_child

REPO = Path(__file__).resolve().parent.parent

# Four rationales per problem: (mode, sample) in (cot, pot) x (0, 1); sample 1 of CoT repeats
# sample 0 (a duplicate for --dedupe to find), sample 1 of PoT differs.
POPULATE_SQL = [
    """
    INSERT INTO corpora (id, name, format) VALUES (1, 'bench', 'gsm8k')
    """,
    """
    INSERT INTO problems (id, corpus_id, split, source_id, question, gold_answer, gold_kind,
                          gold_normalised, worked_solution, content_hash)
    SELECT i, 1, 'train', i::text,
           'A shop sells ' || (i % 97 + 3) || ' boxes of ' || (i % 13 + 2) || ' pencils each on day '
             || i || '. Each pencil costs ' || (i % 7 + 1) || ' dollars and the shop gives a discount of '
             || (i % 5) || ' dollars per box. How much money does the shop take on day ' || i || '?',
           ((i % 97 + 3) * ((i % 13 + 2) * (i % 7 + 1) - i % 5))::text, 'number',
           ((i % 97 + 3) * ((i % 13 + 2) * (i % 7 + 1) - i % 5))::text,
           NULL, md5(i::text) || md5((i + 1)::text)
    FROM generate_series(1, :problems) AS i
    """,
    """
    INSERT INTO rationales (id, problem_id, job_id, provider, model, mode, stage_mode, prompt_version,
                            sample_index, core_question, solving_info, solution_text, final_answer_text,
                            program, answer, verdict, verdict_kind, judged_by, call_ids)
    SELECT (p - 1) * 4 + k + 1, p, NULL, 'sim', 'gold',
           CASE WHEN k < 2 THEN 'cot' ELSE 'pot' END, 'single',
           CASE WHEN k < 2 THEN 'kpdd-cot-single-v1' ELSE 'kpdd-pot-single-v1' END,
           k % 2,
           'How much money does the shop take on day ' || p || '?',
           jsonb_build_array(
             'The shop sells ' || (p % 97 + 3) || ' boxes of ' || (p % 13 + 2) || ' pencils each.',
             'Each pencil costs ' || (p % 7 + 1) || ' dollars.',
             'The discount is ' || (p % 5) || ' dollars per box.'),
           CASE WHEN k < 2 THEN
             'Each box holds ' || (p % 13 + 2) || ' pencils at ' || (p % 7 + 1) || ' dollars, so a box costs '
             || ((p % 13 + 2) * (p % 7 + 1)) || ' dollars.' || chr(10) || 'After the discount a box costs '
             || ((p % 13 + 2) * (p % 7 + 1) - p % 5) || ' dollars.' || chr(10) || 'The shop takes '
             || (p % 97 + 3) || ' * ' || ((p % 13 + 2) * (p % 7 + 1) - p % 5) || ' = '
             || ((p % 97 + 3) * ((p % 13 + 2) * (p % 7 + 1) - p % 5)) || ' dollars.'
           END,
           CASE WHEN k < 2 THEN ((p % 97 + 3) * ((p % 13 + 2) * (p % 7 + 1) - p % 5))::text END,
           CASE WHEN k >= 2 THEN
             'boxes = ' || (p % 97 + 3) || chr(10) || 'per_box = ' || (p % 13 + 2) || ' * ' || (p % 7 + 1)
             || ' - ' || (p % 5) || chr(10) || 'ans = boxes * per_box' || CASE WHEN k = 3 THEN '  # total'
             ELSE '' END
           END,
           ((p % 97 + 3) * ((p % 13 + 2) * (p % 7 + 1) - p % 5))::text,
           'valid', 'match', 'gold', '[]'::jsonb
    FROM generate_series(1, :problems) AS p, generate_series(0, 3) AS k
    """,
    "ANALYZE",
]


def populate(url: str, problems: int) -> float:
    engine = create_engine(url)
    start = time.perf_counter()
    with engine.begin() as conn:
        for statement in POPULATE_SQL:
            conn.execute(text(statement), {"problems": problems} if ":problems" in statement else {})
    engine.dispose()
    return time.perf_counter() - start


def kpdd_export(url: str, out: Path, *flags: str) -> tuple[float, float, dict[str, object]]:
    seconds, peak, stdout = run_child(
        ["-m", "services.cli.main", "export", "--out", str(out), *flags, "--json"], {"KPDD_DATABASE_URL": url}
    )
    return seconds, peak, orjson.loads(stdout)


def naive_export(url: str, rows: int, out: str) -> None:
    """The baseline, run in a child: everything in memory, ORM objects, one Table."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from db.models import Corpus, Problem, Rationale

    engine = create_engine(url)
    with Session(engine) as session:
        result = session.execute(
            select(Rationale, Problem, Corpus.name)
            .join(Problem, Problem.id == Rationale.problem_id)
            .join(Corpus, Corpus.id == Problem.corpus_id)
            .where(Rationale.verdict == "valid")
            .order_by(Rationale.problem_id, Rationale.id)
            .limit(rows)
        ).all()
        records = [
            {
                "rationale_id": r.id,
                "problem_id": p.id,
                "corpus": corpus,
                "question": p.question,
                "gold_answer": p.gold_answer,
                "teacher": f"{r.provider}:{r.model}",
                "mode": r.mode,
                "prompt_version": r.prompt_version,
                "sample_index": r.sample_index,
                "core_question": r.core_question,
                "solving_info": r.solving_info,
                "solution": r.program if r.mode == "pot" else r.solution_text,
                "answer": r.answer,
                "verdict": r.verdict,
                "judged_by": r.judged_by,
            }
            for r, p, corpus in result
        ]
    pq.write_table(pa.Table.from_pylist(records), out, compression="zstd")
    print(len(records))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=250_000, help="problems (4 rationales each)")
    parser.add_argument("--baseline-rows", type=int, default=100_000)
    parser.add_argument("--database-url", help="an empty Postgres database (default: a private server)")
    parser.add_argument("--naive-child", nargs=2, metavar=("ROWS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_child:
        naive_export(os.environ["KPDD_DATABASE_URL"], int(args.naive_child[0]), args.naive_child[1])
        return

    with postgres_database(args.database_url) as url:
        run(url, args)


def run(url: str, args: argparse.Namespace) -> None:
    rationales = args.problems * 4
    seconds = populate(url, args.problems)
    print(f"generated {args.problems:,} problems and {rationales:,} rationales in {seconds:.1f} s")
    with tempfile.TemporaryDirectory(prefix="kpdd-bench-export-") as tmp:
        root = Path(tmp)
        seconds, peak, summary = kpdd_export(url, root / "default")
        rows = int(summary["counts"]["rows"])  # type: ignore[index]
        assert rows == rationales, summary["counts"]
        rate = rows / seconds
        size = sum(f.stat().st_size for f in (root / "default").rglob("*") if f.is_file()) / 1e6
        print(
            f"kpdd export (defaults):     {rate:>9,.0f} rows/s  ({rows:,} rows in {seconds:.1f} s, "
            f"peak RSS {peak:.0f} MB, {size:.0f} MB on disk)"
        )

        seconds2, peak2, summary2 = kpdd_export(url, root / "again")
        same = summary2["snapshot_id"] == summary["snapshot_id"] and all(
            (root / "default" / f["path"]).read_bytes() == (root / "again" / f["path"]).read_bytes()
            for f in summary["files"]  # type: ignore[attr-defined]
        )
        print(
            f"second export, same db:     {rows / seconds2:>9,.0f} rows/s  (peak RSS {peak2:.0f} MB; "
            f"byte-identical: {'yes' if same else 'NO'})"
        )

        seconds3, peak3, summary3 = kpdd_export(
            url,
            root / "filtered",
            "--dedupe",
            "--max-per-problem",
            "2",
            "--decontaminate",
            "gsm8k-test",
            "svamp",
            "asdiv",
            "multiarith",
            "--val-fraction",
            "0.1",
            "--layout",
            "cascade",
        )
        filters = summary3["filters"]
        print(
            f"kpdd export (all filters):  {rationales / seconds3:>9,.0f} rows/s read  "
            f"({filters['exported']:,} rows kept in {seconds3:.1f} s, peak RSS {peak3:.0f} MB)"  # type: ignore[index]
        )

        b_seconds, b_peak, b_out = run_child(
            [
                "-m",
                "benchmarks.bench_export",
                "--naive-child",
                str(args.baseline_rows),
                str(root / "naive.parquet"),
            ],
            {"KPDD_DATABASE_URL": url},
        )
        b_rows = int(b_out.strip())
        b_rate = b_rows / b_seconds
        print(
            f"baseline (ORM .all() + Table.from_pylist): {b_rate:>9,.0f} rows/s  ({b_rows:,} rows, "
            f"peak RSS {b_peak:.0f} MB, growing with the rows)"
        )
        print(f"ratio kpdd/baseline: {rate / b_rate:.1f}x rows/s")
    print(
        f"machine: {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


if __name__ == "__main__":
    main()
