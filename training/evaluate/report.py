"""What an evaluation writes: `predictions.jsonl`, `results.json`, and the table on stderr.

`predictions.jsonl`, one line per item in input order:

    {"dataset", "item_id", "question", "gold", "layout", "mode",
     "stages": [{"task", "input", "output", "stopped", "new_tokens", "input_tokens", "parsed",
                 "error"}, ...],                     # the stages run, in order
     "core_question", "solving_info",                # as parsed (null where the chain broke)
     "answer",                                       # CoT: the final answer text as written
     "program",                                      # PoT: the parsed program
     "kind", "reason", "failed_stage",               # see judging.py's policy table
     "verdict",                                      # the judge's Verdict.to_json(), or null
     "execution"}                                    # the sandbox's ExecutionResult, or null

`results.json` (`summarise`):

    {"model", "layout", "mode", "snapshot_id", "n",
     "datasets": {name: {"n", "correct", "accuracy", "failures": {"wrong", "no_answer",
                                                                  "program_error", "timeout"}}},
     "overall": {same four fields over every item},
     "generation": {"new_tokens", "cut_at_limit", "truncated_sources", "max_new_tokens",
                    "batch_size", "device"},
     "seconds", "items_per_s"}

`correct + sum(failures) == n` in every block; `accuracy` is `correct / n`. Datasets appear in
the order their first item does. Files are written to a temporary name and renamed, so a reader
never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.evaluate.chain import ChainOutcome
from training.evaluate.items import EvalItem
from training.evaluate.judging import FAILURE_KINDS, Judgement, judgement_json

PREDICTIONS_FILE = "predictions.jsonl"
RESULTS_FILE = "results.json"


@dataclass(slots=True)
class Prediction:
    """One item, what the student did with it, and the judgement."""

    item: EvalItem
    layout: str
    mode: str
    outcome: ChainOutcome
    judgement: Judgement

    def to_json(self) -> dict[str, Any]:
        solution = self.outcome.solution
        return {
            "dataset": self.item.dataset,
            "item_id": self.item.item_id,
            "question": self.item.question,
            "gold": self.item.gold,
            "layout": self.layout,
            "mode": self.mode,
            "stages": [stage.to_json() for stage in self.outcome.stages],
            "core_question": self.outcome.core_question,
            "solving_info": self.outcome.solving_info,
            "answer": solution.final_answer_text if solution is not None else None,
            "program": solution.program if solution is not None else None,
            **judgement_json(self.judgement),
        }


def score_block(kinds: Sequence[str]) -> dict[str, Any]:
    """`{n, correct, accuracy, failures}` over prediction kinds."""
    n = len(kinds)
    correct = sum(1 for kind in kinds if kind == "correct")
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "failures": {kind: sum(1 for k in kinds if k == kind) for kind in FAILURE_KINDS},
    }


def summarise(
    predictions: Sequence[Prediction],
    *,
    model: str | None,
    layout: str,
    mode: str,
    seconds: float,
    snapshot_id: str | None = None,
    generation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `results.json` document (see the module docstring)."""
    by_dataset: dict[str, list[str]] = {}
    for prediction in predictions:
        by_dataset.setdefault(prediction.item.dataset, []).append(prediction.judgement.kind)
    n = len(predictions)
    return {
        "model": model,
        "layout": layout,
        "mode": mode,
        "snapshot_id": snapshot_id,
        "n": n,
        "datasets": {name: score_block(kinds) for name, kinds in by_dataset.items()},
        "overall": score_block([p.judgement.kind for p in predictions]),
        "generation": generation or {},
        "seconds": round(seconds, 3),
        "items_per_s": round(n / seconds, 3) if seconds > 0 else None,
    }


def write_outputs(out_dir: Path, predictions: Sequence[Prediction], results: dict[str, Any]) -> None:
    """Write `predictions.jsonl` and `results.json` into `out_dir` (created if missing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in predictions)
    _write_atomic(out_dir / PREDICTIONS_FILE, lines)
    _write_atomic(out_dir / RESULTS_FILE, [json.dumps(results, indent=2, ensure_ascii=False) + "\n"])


def _write_atomic(path: Path, chunks: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for chunk in chunks:
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def format_table(results: dict[str, Any]) -> str:
    """Accuracy per dataset with failure counts, plain text, one row per dataset and `overall`."""
    header = ["dataset", "n", "correct", "accuracy", *FAILURE_KINDS]
    rows = [header]
    blocks = [*results["datasets"].items(), ("overall", results["overall"])]
    for name, block in blocks:
        failures = block["failures"]
        rows.append(
            [
                name,
                str(block["n"]),
                str(block["correct"]),
                f"{100 * block['accuracy']:.1f}%",
                *(str(failures[kind]) for kind in FAILURE_KINDS),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    title = f"{results['layout']} / {results['mode']}: {results['n']} item(s) in {results['seconds']:.1f} s"
    return "\n".join([title, *lines])
