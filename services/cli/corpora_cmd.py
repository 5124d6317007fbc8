"""`kpdd ingest FORMAT PATH` and `kpdd corpora`: load corpora and list them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.cli.common import database_engine, print_json
from services.config import get_settings
from services.corpora.base import LoaderOptions
from services.corpora.registry import LOADERS, get_loader
from services.errors import BadInputError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    formats = ", ".join(f"{name} ({cls.description})" for name, cls in LOADERS.items())
    ingest = sub.add_parser(
        "ingest",
        help="load a corpus file into the database (one transaction)",
        description=f"Formats: {formats}.",
    )
    ingest.add_argument("format", metavar="FORMAT", help=f"one of: {', '.join(LOADERS)}")
    ingest.add_argument("path", metavar="PATH", type=Path, help="the corpus file")
    ingest.add_argument("--corpus", required=True, help="corpus name to ingest into (e.g. gsm8k)")
    ingest.add_argument("--split", help="split name (default: train for gsm8k/jsonl/csv, test otherwise)")
    ingest.add_argument("--question-field", default="question", help="jsonl/csv: question field")
    ingest.add_argument("--answer-field", default="answer", help="jsonl/csv: gold answer field")
    ingest.add_argument("--no-answer", action="store_true", help="jsonl/csv: the corpus is unlabelled")
    ingest.add_argument("--id-field", help="jsonl/csv: field holding a stable id (default: position)")
    ingest.add_argument("--solution-field", help="jsonl/csv: field holding a worked solution")
    ingest.add_argument(
        "--numeric-gold", action="store_true", help="jsonl/csv: reject gold answers that are not numbers"
    )
    ingest.add_argument(
        "--skip-invalid",
        action="store_true",
        help="ingest the good records and report the bad ones (default: any bad record aborts)",
    )
    ingest.add_argument("--json", action="store_true", help="print the report as one JSON document")
    ingest.set_defaults(handler=run_ingest)

    corpora = sub.add_parser("corpora", help="list corpora with problem counts per split")
    corpora.add_argument("--json", action="store_true", help="print one JSON document")
    corpora.set_defaults(handler=run_corpora)


def run_ingest(args: argparse.Namespace) -> int:
    # SQLAlchemy is imported by the handlers, not at the top: `kpdd ingest --help` stays light.
    from services.corpora.ingest import ingest_corpus

    loader_cls = get_loader(args.format)
    if args.no_answer and args.numeric_gold:
        raise BadInputError("--no-answer and --numeric-gold contradict each other; pass one")
    options = LoaderOptions(
        question_field=args.question_field,
        answer_field=None if args.no_answer else args.answer_field,
        id_field=args.id_field,
        solution_field=args.solution_field,
        numeric_gold=args.numeric_gold,
    )
    loader = loader_cls(args.path, options)
    settings = get_settings()
    engine = database_engine(settings)
    report = ingest_corpus(
        engine,
        loader,
        args.corpus,
        args.split,
        skip_invalid=args.skip_invalid,
        batch_size=settings.ingest_batch_size,
    )
    if args.json:
        print_json(report.to_json())
        return 0
    for message in report.skipped:
        print(f"skipped: {message}", file=sys.stderr)
    print(
        f"{report.corpus}/{report.split}: {report.read} read, {report.inserted} inserted, "
        f"{report.unchanged} unchanged, {len(report.skipped)} skipped in {report.seconds:.2f} s"
    )
    return 0


def run_corpora(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy.orm import Session

    from db.queries.corpora import corpus_summaries

    engine = database_engine()
    with Session(engine) as session:
        summaries = corpus_summaries(session)
    if args.json:
        print_json(
            {
                "corpora": [
                    {
                        "name": s.name,
                        "format": s.format,
                        "problems": s.total,
                        "splits": s.splits,
                        "gold_kinds": s.gold_kinds,
                    }
                    for s in summaries
                ]
            }
        )
        return 0
    if not summaries:
        print("no corpora yet: load one with `kpdd ingest FORMAT PATH --corpus NAME`")
        return 0
    table = Table(title="corpora")
    for column in ("corpus", "format", "split", "problems", "gold kinds"):
        table.add_column(column, justify="right" if column == "problems" else "left")
    for s in summaries:
        kinds = ", ".join(f"{k} {v}" for k, v in s.gold_kinds.items())
        for i, (split, count) in enumerate(sorted(s.splits.items())):
            table.add_row(
                s.name if i == 0 else "",
                s.format if i == 0 else "",
                split,
                str(count),
                kinds if i == 0 else "",
            )
        if not s.splits:
            table.add_row(s.name, s.format, "-", "0", "")
    Console().print(table)
    return 0
