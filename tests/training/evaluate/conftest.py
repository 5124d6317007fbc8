"""Fixtures for evaluation tests: GSM8K test items, tiny saved students, one shared sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.validation.sandbox import Sandbox
from tests.training.evaluate.students import gsm8k_items, save_student, tokenizer_texts
from training.evaluate.items import EvalItem


@pytest.fixture(scope="session")
def items6(datasets_dir: Path) -> list[EvalItem]:
    return gsm8k_items(datasets_dir, 6)


@pytest.fixture(scope="session")
def texts(datasets_dir: Path) -> list[str]:
    return tokenizer_texts(gsm8k_items(datasets_dir, 40))


@pytest.fixture(scope="session")
def seq2seq_student(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> Path:
    return save_student(tmp_path_factory.mktemp("t5") / "student", "seq2seq", texts)


@pytest.fixture(scope="session")
def causal_student(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> Path:
    directory = tmp_path_factory.mktemp("llama") / "student"
    return save_student(directory, "causal", texts, layout="cascade", modes=("pot",))


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """One basic-only sandbox for the session (no numpy/sympy server: faster to start)."""
    with Sandbox(scientific=False, parallelism=4) as started:
        yield started


@pytest.fixture
def items_file(tmp_path: Path, items6: list[EvalItem]) -> Path:
    import json

    path = tmp_path / "items.jsonl"
    lines = [
        json.dumps({"dataset": i.dataset, "item_id": i.item_id, "question": i.question, "gold": i.gold})
        for i in items6
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
