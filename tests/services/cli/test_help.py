"""Help is complete and cheap: every option says what it does and its default, `kpdd --help`
imports no command module, and abbreviated options are refused."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator

import pytest

from services.cli.main import SUMMARIES, build_parser, main

HEAVY = ("openai", "anthropic", "pyarrow", "torch", "transformers", "deepspeed", "celery", "sqlalchemy")


def _parsers(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def _imported_by(argv: list[str]) -> set[str]:
    """The heavy modules imported by `kpdd ARGV`, run in a fresh interpreter."""
    check = (
        "import sys\n"
        "from services.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('imported:', ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert "usage: kpdd" in done.stdout
    imported = done.stderr.rpartition("imported:")[2].strip()
    return {m for m in imported.split(",") if m}


def test_every_option_of_every_command_has_help() -> None:
    missing = [
        f"{path} {'/'.join(action.option_strings)}"
        for path, parser in _parsers(build_parser(), "kpdd")
        for action in parser._actions
        if action.option_strings and not (action.help or "").strip()
    ]
    assert missing == []


def test_help_shows_defaults() -> None:
    generate = dict(_parsers(build_parser("generate"), "kpdd"))["kpdd generate"]
    text = " ".join(generate.format_help().split())
    for fragment in ("(default: cot)", "(default: single)", "(default: 1)", "(default 16)"):
        assert fragment in text, fragment


def test_summaries_are_what_the_modules_register() -> None:
    full = build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    registered = {action.dest: action.help for action in sub._choices_actions}
    assert registered == SUMMARIES


def test_top_level_help_imports_no_command_module() -> None:
    assert _imported_by(["--help"]) == set()


@pytest.mark.parametrize("command", ["generate", "probe", "train", "ingest", "status"])
def test_command_help_imports_no_sdk_nor_training_stack(command: str) -> None:
    assert _imported_by([command, "--help"]) & {"openai", "anthropic", "pyarrow", "torch"} == set()


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--corpus", "c", "--teacher", "sim:gold", "--lim", "5"],
        ["ingest", "gsm8k", "x.jsonl", "--corpus", "c", "--skip-inv"],
        ["run", "show", "1", "--js"],
        ["--verb", "corpora"],
    ],
    ids=["generate", "ingest", "nested", "top-level"],
)
def test_abbreviated_options_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_a_misspelt_command_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["generat"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'generat'" in err and "generate" in err
