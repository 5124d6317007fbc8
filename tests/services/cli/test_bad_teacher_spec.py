"""A malformed teacher spec ends in one line on stderr and exit code 2, never a traceback, and
nothing is written (the spec is read before the database is opened)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from services.cli.main import main

BAD_SPECS = [
    "openai-compatible:m@http://[::1:8000/v1",  # IPv6 host without its closing bracket
    "openai-compatible:m@http://[fe80::1%zz/v1",
    "openai-compatible:m@http://host:notaport/v1",
]


@pytest.mark.parametrize("spec", BAD_SPECS)
@pytest.mark.parametrize(
    "command",
    [
        ["generate", "--corpus", "c", "--teacher"],
        ["probe", "--corpus", "c", "--teacher"],
    ],
    ids=["generate", "probe"],
)
def test_malformed_base_url_is_one_line_and_exit_2(
    command: list[str],
    spec: str,
    kpdd_env: Callable[..., None],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kpdd_env()
    code = main([*command, spec])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kpdd: error: teacher spec ")
    assert "base URL" in lines[0]
    assert not (tmp_path / "kpdd-data").exists()  # no database was created
