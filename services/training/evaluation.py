"""`kpdd eval`: a student on evaluation sets, recorded in the database.

The items come from the original test files under `KPDD_DATASETS_DIR` (`gsm8k-test`, `svamp`,
`asdiv`, `multiarith`, `gsm8k-train`) or from any ingested corpus (`NAME` or `NAME/SPLIT`),
loaded by the same code that decontaminates snapshots against them (`services.export.decontam`),
so the ids in predictions match the ids in a snapshot's decontamination report. They are
written to `items.jsonl` in the output directory; `python -m training.evaluate` (a child
process: the model and torch live there, the sandbox too) generates, executes, judges and
writes `predictions.jsonl` and `results.json`; the results go into the `evaluations` table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from db.engine import session_scope
from db.queries import training as q
from services.config import get_settings
from services.errors import BadInputError, RunFailure
from services.export.decontam import resolve_eval_sets
from services.training import DEFAULT_EVAL_DATASETS
from services.training.launch import raise_for_child


@dataclass(slots=True)
class EvalRequest:
    model_dir: Path
    datasets: list[str] = field(default_factory=lambda: list(DEFAULT_EVAL_DATASETS))
    layout: str | None = None
    mode: str | None = None
    batch_size: int = 16
    limit: int | None = None
    max_new_tokens: int | None = None
    device: str | None = None
    run_id: int | None = None
    out_dir: Path | None = None


def write_items(engine: Engine, names: list[str], limit: int | None, path: Path) -> dict[str, int]:
    """Write the evaluation items (first `limit` per dataset) as JSON lines; returns the counts."""
    if not names:
        raise BadInputError("--dataset: give at least one dataset, e.g. gsm8k-test,svamp")
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        sets = resolve_eval_sets(tuple(names), get_settings().datasets_dir, conn, flag="--dataset")
    with path.open("w") as out:
        for eval_set in sets:
            rows = list(zip(eval_set.items, eval_set.golds, strict=True))[:limit]
            for (item_id, question), gold in rows:
                record = {"dataset": eval_set.name, "item_id": item_id, "question": question, "gold": gold}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            counts[eval_set.name] = len(rows)
    return counts


def run_evaluation(engine: Engine, request: EvalRequest, *, echo: bool = False) -> dict[str, Any]:
    """Evaluate, record and return `results.json`. Bad input exits before a row is written
    when it can be seen here (unknown dataset, missing model directory); the child's own checks
    (model files, layout, mode) fail the recorded evaluation with its message."""
    if request.limit is not None and request.limit < 1:
        raise BadInputError(f"--limit: must be at least 1, got {request.limit}")
    if request.batch_size < 1:
        raise BadInputError(f"--batch-size: must be at least 1, got {request.batch_size}")
    if not (request.model_dir / "kpdd_student.json").is_file():
        raise BadInputError(
            f"--model {request.model_dir}: not a kpdd student (no kpdd_student.json); give a run's "
            "final/ directory (`kpdd run show ID` prints it) or use --run ID"
        )
    with session_scope(engine) as session:
        evaluation = q.add_evaluation(
            session,
            run_id=request.run_id,
            model_dir=str(request.model_dir.resolve()),
            layout=request.layout,
            mode=request.mode,
            datasets=list(request.datasets),
            limit=request.limit,
            out_dir="",
        )
        eval_id = evaluation.id
        out_dir = (request.out_dir or get_settings().data_dir / "evals" / f"eval-{eval_id}").resolve()
        if request.out_dir is not None:
            out_dir = out_dir / f"eval-{eval_id}"
        q.update_evaluation_dir(session, eval_id, str(out_dir))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        items = out_dir / "items.jsonl"
        write_items(engine, request.datasets, request.limit, items)
        results = _run_child(request, items, out_dir, echo=echo)
    except BaseException as exc:
        with session_scope(engine) as session:
            q.finish_evaluation(session, eval_id, "failed", reason=str(exc) or type(exc).__name__)
        raise
    overall = results.get("overall") or {}
    with session_scope(engine) as session:
        q.finish_evaluation(session, eval_id, "succeeded", results=results, accuracy=overall.get("accuracy"))
    results["evaluation_id"] = eval_id
    results["out_dir"] = str(out_dir)
    return results


def _run_child(request: EvalRequest, items: Path, out_dir: Path, *, echo: bool) -> dict[str, Any]:
    argv = [sys.executable, "-m", "training.evaluate", "--model", str(request.model_dir)]
    argv += ["--items", str(items), "--out", str(out_dir), "--batch-size", str(request.batch_size)]
    for flag, value in (
        ("--layout", request.layout),
        ("--mode", request.mode),
        ("--max-new-tokens", request.max_new_tokens),
        ("--device", request.device),
    ):
        if value is not None:
            argv += [flag, str(value)]
    # The child prints its table on stderr: shown to the user, and kept for error messages.
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if echo and proc.stderr:
        sys.stderr.write(proc.stderr)
    raise_for_child(proc.returncode, proc.stderr, "kpdd eval (training.evaluate)")
    try:
        results: dict[str, Any] = json.loads((out_dir / "results.json").read_text())
    except (OSError, ValueError) as exc:
        raise RunFailure(f"evaluation wrote no readable {out_dir / 'results.json'}: {exc}") from None
    return results
