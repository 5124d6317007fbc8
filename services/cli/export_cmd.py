"""`kpdd export`, `kpdd snapshots`, `kpdd snapshot verify`: dataset snapshots.

`export` writes an immutable snapshot directory (data files, `manifest.json`, `README.md`) and
records it in the database; `snapshots` lists the recorded ones; `snapshot verify DIR` checks a
directory against its manifest (exit 0 when every file matches, 1 naming each file that was
changed, removed or added). Bad input (an unknown job, corpus, teacher or evaluation set, an
existing `--out`) exits 2 before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from services.cli.common import database_engine, print_json
from services.config import get_settings
from services.export.decontam import BUILTIN_EVAL_SETS
from services.export.spec import (
    DEFAULT_DECONTAM_NGRAM,
    DEFAULT_DECONTAM_THRESHOLD,
    DEFAULT_NEAR_DUPLICATE_THRESHOLD,
    DEFAULT_ROW_GROUP_SIZE,
    DEFAULT_SPLIT_SEED,
    FORMATS,
    LAYOUTS,
    ExportSpec,
    parse_modes,
)

if TYPE_CHECKING:
    from services.export.snapshot import ExportResult


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = sub.add_parser(
        "export",
        help="write a filtered, reproducible dataset snapshot (Parquet or JSON lines)",
        description="Export rationales into an immutable snapshot directory (see docs/snapshots.md).",
    )
    export.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="new directory for the snapshot (must not exist)",
    )
    export.add_argument(
        "--job",
        type=int,
        nargs="+",
        action="extend",
        default=[],
        metavar="ID",
        help="only the scope of these generation jobs (repeatable)",
    )
    export.add_argument(
        "--corpus",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="only problems of these corpora",
    )
    export.add_argument(
        "--teacher",
        nargs="+",
        action="extend",
        default=[],
        metavar="SPEC",
        help="only these teachers, as PROVIDER:MODEL (e.g. sim:gold)",
    )
    export.add_argument("--mode", default="both", choices=("cot", "pot", "both"), help="default both")
    export.add_argument(
        "--verdict", default="valid", choices=("valid", "all"), help="valid (default) or every verdict"
    )
    export.add_argument(
        "--max-per-problem",
        type=int,
        metavar="N",
        help="at most N rationales per problem and mode (distinct solutions first)",
    )
    export.add_argument(
        "--dedupe", action="store_true", help="drop exact and near-duplicate solutions per problem and mode"
    )
    export.add_argument(
        "--near-duplicate-threshold",
        type=float,
        default=DEFAULT_NEAR_DUPLICATE_THRESHOLD,
        metavar="J",
        help=f"token 3-gram Jaccard for near duplicates (default {DEFAULT_NEAR_DUPLICATE_THRESHOLD})",
    )
    export.add_argument(
        "--decontaminate",
        nargs="+",
        action="extend",
        default=[],
        metavar="DATASET",
        help=f"drop problems overlapping these evaluation sets: {', '.join(BUILTIN_EVAL_SETS)}, "
        "or an ingested CORPUS[/SPLIT]",
    )
    export.add_argument(
        "--decontam-ngram",
        type=int,
        default=DEFAULT_DECONTAM_NGRAM,
        metavar="N",
        help=f"words per n-gram (default {DEFAULT_DECONTAM_NGRAM})",
    )
    export.add_argument(
        "--decontam-threshold",
        type=float,
        default=DEFAULT_DECONTAM_THRESHOLD,
        metavar="F",
        help="share of a question's n-grams found in one evaluation question that drops it "
        f"(default {DEFAULT_DECONTAM_THRESHOLD})",
    )
    export.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="share of problems in the validation split (default 0: train only)",
    )
    export.add_argument(
        "--split-seed",
        default=DEFAULT_SPLIT_SEED,
        metavar="TEXT",
        help=f"seed of the split hash (default {DEFAULT_SPLIT_SEED})",
    )
    export.add_argument("--format", default="parquet", choices=FORMATS, help="data file format")
    export.add_argument(
        "--layout",
        default="end-to-end",
        choices=LAYOUTS,
        help="student task tables beside `rationales`: end-to-end (default; `end_to_end`), "
        "two-stage (`key_points`, then `solution`) or cascade (`core_question`, `solving_info`, "
        "`solution`); every input starts with a line `[TASK | KPDD-CoT]` or `[TASK | KPDD-PoT]`",
    )
    export.add_argument(
        "--row-group-size",
        type=int,
        default=DEFAULT_ROW_GROUP_SIZE,
        metavar="ROWS",
        help=f"rows per Parquet row group (default {DEFAULT_ROW_GROUP_SIZE})",
    )
    export.add_argument("--json", action="store_true", help="print one JSON document")
    export.set_defaults(handler=run_export)

    listing = sub.add_parser("snapshots", help="list the recorded dataset snapshots")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(handler=run_snapshots)

    snapshot = sub.add_parser("snapshot", help="work with one snapshot directory")
    snapshot_sub = snapshot.add_subparsers(dest="snapshot_command", metavar="ACTION", required=True)
    verify = snapshot_sub.add_parser("verify", help="check every file of a snapshot against its manifest")
    verify.add_argument("dir", type=Path, metavar="DIR")
    verify.add_argument("--json", action="store_true", help="print one JSON document")
    verify.set_defaults(handler=run_verify)


def spec_from_args(args: argparse.Namespace) -> ExportSpec:
    return ExportSpec(
        jobs=tuple(args.job),
        corpora=tuple(args.corpus),
        teachers=tuple(args.teacher),
        modes=parse_modes(args.mode),
        verdict=args.verdict,
        max_per_problem=args.max_per_problem,
        dedupe=args.dedupe,
        near_duplicate_threshold=args.near_duplicate_threshold,
        decontaminate=tuple(args.decontaminate),
        decontam_ngram=args.decontam_ngram,
        decontam_threshold=args.decontam_threshold,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        format=args.format,
        layout=args.layout,
        row_group_size=args.row_group_size,
    )


def run_export(args: argparse.Namespace) -> int:
    # pyarrow is imported here, not when the parser is built, so other commands start faster.
    from services.export.snapshot import check_out, export_snapshot

    spec = spec_from_args(args)
    check_out(args.out)  # before connecting: the cheapest mistake to report
    settings = get_settings()
    result = export_snapshot(database_engine(settings), spec, args.out, settings.datasets_dir)
    if args.json:
        print_json(result.summary())
    else:
        _print_summary(result)
    return 0


def _print_summary(result: ExportResult) -> None:
    m = result.manifest
    counts, filters = m["counts"], m["filters"]
    print(f"snapshot {result.snapshot_id} written to {result.path} in {result.seconds:.1f} s")
    splits = ", ".join(
        f"{s} {c['rows']:,} rows / {c['problems']:,} problems" for s, c in counts["by_split"].items()
    )
    print(f"  {splits}")
    for title in ("corpus", "teacher", "mode", "verdict"):
        values = ", ".join(f"{k} {v:,}" for k, v in counts[f"by_{title}"].items())
        print(f"  by {title}: {values or '-'}")
    print(
        f"  filters: selected {filters['selected']:,}, decontaminated {filters['decontaminated']:,}, "
        f"exact duplicates {filters['exact_duplicates']:,}, near duplicates {filters['near_duplicates']:,}, "
        f"over cap {filters['over_cap']:,}, exported {filters['exported']:,}"
    )
    decontam = m["decontamination"]
    if decontam["datasets"]:
        print(
            f"  decontamination ({decontam['ngram']}-grams, threshold {decontam['threshold']}): "
            f"{decontam['dropped_problems']} problem(s) dropped, all listed in manifest.json"
        )
        for d in decontam["dropped"][:10]:
            print(
                f"    {d['corpus']}/{d['source_split']} {d['source_id']} ~ {d['dataset']} {d['eval_id']} "
                f"(overlap {d['overlap']})"
            )
    for f in m["files"]:
        rows = f"{f['rows']:,} rows" if f["rows"] is not None else "card"
        print(f"  {f['path']}: {rows}, sha256 {f['sha256'][:16]}...")


def run_snapshots(args: argparse.Namespace) -> int:
    # Imported here: SQLAlchemy and rich are not needed to build the parser (`--help`).
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy.orm import Session

    from db.queries.snapshots import list_snapshots

    with Session(database_engine()) as session:
        records = list_snapshots(session)
    items = [
        {
            "snapshot_id": r.snapshot_id,
            "record_id": r.id,
            "path": r.path,
            "present": Path(r.path, "manifest.json").is_file(),
            "layout": r.layout,
            "format": r.format,
            "rows": r.rows,
            "by_split": r.counts.get("counts", {}).get("by_split", {}),
            "manifest_sha256": r.manifest_sha256,
            "created_at": r.created_at.isoformat(),
        }
        for r in records
    ]
    if args.json:
        print_json({"snapshots": items})
        return 0
    if not items:
        print("no snapshots yet: write one with `kpdd export --out DIR`")
        return 0
    table = Table(title="snapshots")
    for column in ("snapshot", "created", "rows", "layout", "format", "path"):
        table.add_column(column)
    for item in items:
        path = item["path"] + ("" if item["present"] else " (missing)")
        table.add_row(
            item["snapshot_id"],
            item["created_at"][:19],
            f"{item['rows']:,}",
            item["layout"],
            item["format"],
            path,
        )
    Console().print(table)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from services.export.manifest import verify_snapshot

    report = verify_snapshot(args.dir)
    if args.json:
        print_json(report.to_json())
    elif report.ok:
        print(
            f"{args.dir}: snapshot {report.snapshot_id} OK ({report.files_checked} files match the manifest)"
        )
    else:
        for problem in report.problems:
            print(f"{args.dir}: {problem}", file=sys.stderr)
        print(
            f"kpdd: error: snapshot {args.dir} does not match its manifest "
            f"({len(report.problems)} problem(s))",
            file=sys.stderr,
        )
    return 0 if report.ok else 1
