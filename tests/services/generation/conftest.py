"""Fixtures for generation tests: a small GSM8K corpus and a simulator over real HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.teachers.simulator import SimulatorConfig, run_in_thread
from services.teachers.simulator.bank import CorpusSource
from services.teachers.simulator.faults import FaultRates
from tests.conftest import CliResult


def gsm8k_subset(datasets_dir: Path, tmp_path: Path, count: int, *, offset: int = 0) -> Path:
    lines = (datasets_dir / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    path = tmp_path / f"gsm8k-{offset}-{count}.jsonl"
    path.write_text("\n".join(lines[offset : offset + count]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def small_corpus(kpdd: Callable[..., CliResult], datasets_dir: Path, tmp_path: Path) -> Callable[[int], str]:
    """Ingest the first N GSM8K train problems as corpus `g`; returns its name."""

    def ingest(count: int, name: str = "g", *extra: str) -> str:
        path = gsm8k_subset(datasets_dir, tmp_path, count)
        result = kpdd("ingest", "gsm8k" if not extra else "jsonl", path, "--corpus", name, *extra)
        assert result.code == 0, result.err
        return name

    return ingest


@pytest.fixture
def simulator(datasets_dir: Path) -> Iterator[Callable[..., str]]:
    """Start simulators answering GSM8K train from its gold solutions; returns their URL."""
    handles = []

    def start(**config: object) -> str:
        faults = config.pop("faults", None)
        handle = run_in_thread(
            SimulatorConfig(
                corpora=[CorpusSource("gsm8k", datasets_dir / "gsm8k" / "train.jsonl")],
                faults=faults if isinstance(faults, FaultRates) else FaultRates(),
                **config,  # type: ignore[arg-type]
            )
        )
        handles.append(handle)
        return str(handle.url)

    yield start
    for handle in handles:
        handle.close()
