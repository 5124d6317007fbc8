"""`python -m training.evaluate`: the CLI `kpdd eval` runs as a child process.

    python -m training.evaluate --model DIR --items FILE.jsonl --out DIR
        [--layout end-to-end|two-stage|cascade] [--mode cot|pot] [--batch-size B]
        [--max-new-tokens N] [--device cpu|cuda] [--program-timeout S] [--json] [-v]

Writes `predictions.jsonl` and `results.json` into `--out` (see `report`), prints the accuracy
table on stderr, and keeps stdout quiet unless `--json` (then: the results document, one JSON
value). Exit codes: 0 done (whatever the accuracy), 2 bad input (one line
`kpdd: error: ...` naming the file, line or flag and the fix), 1 a failure while running.
Input errors are found before torch is imported, so they are reported at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from training.evaluate.errors import EvalError, EvalInputError
from training.evaluate.items import read_items
from training.evaluate.report import format_table
from training.evaluate.run import DEFAULT_BATCH_SIZE


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are the project's one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"kpdd: error: {message} (see python -m training.evaluate --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m training.evaluate",
        description=(
            "Evaluate a KPDD student on test items: generate (greedy), parse the key points, run "
            "PoT programs in the sandbox, judge against the gold answers, and report accuracy per "
            "dataset with failures by kind."
        ),
    )
    parser.add_argument(
        "--model", required=True, type=Path, help="student folder (save_pretrained + kpdd_student.json)"
    )
    parser.add_argument(
        "--items", required=True, type=Path, help="JSON lines: dataset, item_id, question, gold"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="folder for predictions.jsonl and results.json"
    )
    parser.add_argument("--layout", help="end-to-end, two-stage or cascade (default: the student's)")
    parser.add_argument("--mode", help="cot or pot (default: the student's only mode)")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"default {DEFAULT_BATCH_SIZE}"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, help="per stage (default: the student's max_target_tokens)"
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--program-timeout", type=float, help="PoT: wall-clock seconds per program (default 5)"
    )
    parser.add_argument("--json", action="store_true", help="print results.json on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _run(args)
    except EvalError as exc:
        print(f"kpdd: error: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(args: argparse.Namespace) -> int:
    if args.program_timeout is not None and not 0 < args.program_timeout <= 3600:
        raise EvalInputError(f"--program-timeout must be in (0, 3600] seconds, got {args.program_timeout}")
    if args.out.exists() and not args.out.is_dir():
        raise EvalInputError(f"--out {args.out}: is a file; give a folder")
    items = read_items(args.items)
    # Checked here too, before torch is imported: input errors must be quick.
    from training.evaluate.student import read_student_info, resolve_layout_mode

    resolve_layout_mode(read_student_info(args.model), args.layout, args.mode)
    _quiet_transformers()
    from training.evaluate.run import evaluate

    result = evaluate(
        args.model,
        items,
        layout=args.layout,
        mode=args.mode,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        out_dir=args.out,
        program_timeout_s=args.program_timeout,
    )
    print(format_table(result.results), file=sys.stderr)
    if args.json:
        print(json.dumps(result.results))
    return 0


def _quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers: stderr is for the table."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
