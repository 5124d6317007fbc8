"""Fixtures for export tests: real rationales from the in-process teacher simulator, the CLI on
SQLite alone (for the tests where the backend does not matter), and snapshot readers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from services.cli.main import main
from tests.conftest import CliResult

# GSM8K train line 20 ("Bella bought stamps...") is a templated copy of GSM8K test item 632:
# the subsets below skip it so that only the problems a test plants are contaminated.
CONTAMINATED_TRAIN_LINE = 20


def gsm8k_lines(datasets_dir: Path, split: str, indices: list[int]) -> list[str]:
    lines = (datasets_dir / "gsm8k" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [lines[i] for i in indices]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def sqlite_kpdd(
    sqlite_url: str, kpdd_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> Callable[..., CliResult]:
    """`kpdd ARGS...` in-process against a fresh SQLite database (backend-independent tests)."""
    kpdd_env(database_url=sqlite_url)

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def make_rationales(datasets_dir: Path, tmp_path: Path) -> Callable[..., None]:
    """Ingest GSM8K train problems as corpus `name` and generate rationales for them with the
    simulator: `sim:gold` in both modes (`samples` each; the samples of one problem are
    identical), plus one wrong-answer CoT sample per problem by `sim:gold+fault=wrong`
    (verdict invalid) when `wrong` is set."""

    def make(
        kpdd: Callable[..., CliResult],
        count: int = 6,
        *,
        name: str = "g",
        offset: int = 0,
        samples: int = 2,
        wrong: bool = True,
    ) -> None:
        indices = [i for i in range(offset, offset + count + 1) if i != CONTAMINATED_TRAIN_LINE][:count]
        path = write_lines(tmp_path / f"{name}.jsonl", gsm8k_lines(datasets_dir, "train", indices))
        result = kpdd("ingest", "gsm8k", path, "--corpus", name)
        assert result.code == 0, result.err
        result = kpdd(
            "generate", "--corpus", name, "--teacher", "sim:gold", "--mode", "both",
            "--samples", samples, "--json",
        )  # fmt: skip
        assert result.code == 0, result.err
        if wrong:
            result = kpdd("generate", "--corpus", name, "--teacher", "sim:gold+fault=wrong", "--json")
            assert result.code == 0, result.err

    return make


def read_manifest(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / "manifest.json").read_text(encoding="utf-8")))


def read_rows(root: Path, table: str, split: str = "train") -> list[dict[str, Any]]:
    """Every row of one data file (Parquet or JSON lines) as dicts."""
    parquet = root / "data" / table / f"{split}.parquet"
    if parquet.exists():
        return list(pq.read_table(parquet).to_pylist())
    jsonl = root / "data" / table / f"{split}.jsonl"
    return [json.loads(line) for line in jsonl.read_bytes().splitlines()]


def snapshot_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
