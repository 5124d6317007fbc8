"""Fixtures for the training data tests: KPDD task texts written by the project's own
formatting code, tokenizers trained on them, and hand-written snapshot directories."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.kpdd.formatting import format_key_points, format_student_input
from services.kpdd.records import KeyPoints
from training.data import TaskExample, build_tokenizer

PROGRAM = (
    "def clips_sold(april):\n"
    "    may = april / 2\n"
    "    if may > 0:\n"
    "        label = 'tab\there'  # a literal tab inside a string\n"
    "        return april + may\n"
    "    return 0\n"
    "\n"
    "\n"
    "ans = clips_sold(48)   \n"
)
QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?",
    "Betty needs $100 for a wallet. She has half of it; her parents give $15 and her grandparents "
    "twice as much. How much more money does Betty need?",
]


def kpdd_examples() -> list[TaskExample]:
    """End-to-end examples of both modes, inputs with headers, targets in the KPDD format."""
    examples = []
    for number, question in enumerate(QUESTIONS):
        info = [f"There are {number + 48} items.", "Half of them are sold in May."]
        cot = KeyPoints(
            "How many altogether?", info, f"{number + 48} / 2 = {(number + 48) / 2}", f"{number + 72}"
        )
        pot = KeyPoints("How many altogether?", info, program=PROGRAM.replace("48", str(number + 48)))
        for mode, key_points in (("cot", cot), ("pot", pot)):
            examples.append(
                TaskExample(
                    "end-to-end",
                    mode,
                    format_student_input("end-to-end", mode, question),
                    format_key_points(key_points),
                )
            )
    return examples


def corpus() -> list[str]:
    return [text for e in kpdd_examples() for text in (e.input, e.target)] * 3


@pytest.fixture(scope="session")
def causal_tokenizer():
    return build_tokenizer(corpus(), vocab_size=600, arch="causal")


@pytest.fixture(scope="session")
def seq2seq_tokenizer():
    return build_tokenizer(corpus(), vocab_size=600, arch="seq2seq")


def write_snapshot(
    root: Path,
    tables: dict[str, dict[str, list[dict[str, Any]]]],
    *,
    layout: str = "end-to-end",
    fmt: str = "parquet",
) -> Path:
    """A snapshot directory like `kpdd export` writes: tables {table: {split: rows}} under
    `data/<table>/<split>.<fmt>` and a manifest with the fields the reader uses."""
    files = []
    for table, splits in tables.items():
        for split, rows in splits.items():
            rel = f"data/{table}/{split}.{fmt}"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            full = [{"rationale_id": n, **row, "split": split} for n, row in enumerate(rows)]
            if fmt == "parquet":
                pq.write_table(pa.Table.from_pylist(full), path)
            else:
                path.write_text("".join(json.dumps(r) + "\n" for r in full), encoding="utf-8")
            files.append({"path": rel, "role": "data", "table": table, "split": split, "rows": len(rows)})
    manifest = {"kind": "kpdd-snapshot", "spec": {"layout": layout, "format": fmt}, "files": files}
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


@pytest.fixture
def make_snapshot(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(tables: dict[str, dict[str, list[dict[str, Any]]]], **kwargs: Any) -> Path:
        return write_snapshot(tmp_path / f"snap-{next(counter)}", tables, **kwargs)

    return make
