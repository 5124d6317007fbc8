"""`kpdd eval`: evaluate a student on GSM8K, SVAMP, ASDiv, MultiArith or any ingested corpus.

The model generates greedily in batches, programs run in the sandbox, answers are judged by the
project's answer matching; a table of accuracy per dataset with each failure kind is printed,
the results are recorded in the database and every prediction is written to
`predictions.jsonl` in the output directory. The work is `services.training.evaluation`'s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.training import DEFAULT_EVAL_DATASETS as DEFAULT_DATASETS


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "eval",
        help="evaluate a trained student on math word-problem test sets",
        description="Generate with a student, execute its programs in the sandbox, judge its "
        "answers, print accuracy per dataset and record it.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a student's directory (a run's final/)")
    source.add_argument("--run", type=int, help="the final model of this training run")
    parser.add_argument(
        "--dataset",
        default=",".join(DEFAULT_DATASETS),
        help="comma-separated: gsm8k-test, svamp, asdiv, multiarith, gsm8k-train, or an ingested "
        f"corpus NAME[/SPLIT] (default {','.join(DEFAULT_DATASETS)})",
    )
    parser.add_argument(
        "--layout",
        choices=("end-to-end", "two-stage", "cascade"),
        help="inference chain (default: the layout the student was trained on)",
    )
    parser.add_argument("--mode", choices=("cot", "pot"), help="solution wanted (default: the student's)")
    parser.add_argument("--batch-size", type=int, default=16, help="generation batch (default 16)")
    parser.add_argument("--limit", type=int, help="first N items of each dataset")
    parser.add_argument("--max-new-tokens", type=int, help="default: the student's target length")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--out", type=Path, help="output folder (default KPDD_DATA_DIR/evals/eval-ID)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    parser.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    # Imported here so that `kpdd eval --help` starts without the database layer.
    from db.engine import session_scope
    from db.queries import training as q
    from services.cli.common import database_engine, print_json
    from services.errors import BadInputError
    from services.training.evaluation import EvalRequest, run_evaluation
    from services.training.runs import require_final_dir

    engine = database_engine()
    model_dir = args.model
    if args.run is not None:
        with session_scope(engine) as session:
            run = q.get_run(session, args.run)
            if run is None:
                raise BadInputError(f"--run {args.run}: no such training run (see `kpdd runs`)")
            model_dir = require_final_dir(run)
    datasets = [name.strip() for name in args.dataset.split(",") if name.strip()]
    request = EvalRequest(
        model_dir=model_dir,
        datasets=datasets,
        layout=args.layout,
        mode=args.mode,
        batch_size=args.batch_size,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        run_id=args.run,
        out_dir=args.out,
    )
    results = run_evaluation(engine, request, echo=True)
    if args.json:
        print_json(results)
    else:
        overall = results.get("overall") or {}
        accuracy = overall.get("accuracy")
        shown = "-" if accuracy is None else f"{100 * accuracy:.1f}%"
        print(
            f"evaluation {results['evaluation_id']}: overall {shown} "
            f"({overall.get('correct')}/{overall.get('n')}); predictions in "
            f"{results['out_dir']}/predictions.jsonl",
            file=sys.stdout,
        )
    return 0
