"""The CLI's command table matches what the command modules register, and a command only
imports its own module."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from services.cli.main import COMMAND_MODULES, COMMANDS, build_parser


def test_command_table_matches_the_modules() -> None:
    for module_name in COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(module_name).register(sub)
        registered = set(sub.choices)
        assert registered == {c for c, m in COMMANDS.items() if m == module_name}, module_name


def test_a_command_imports_only_its_module() -> None:
    check = (
        "import sys\n"
        "from services.cli.main import build_parser\n"
        "build_parser('corpora')\n"
        "heavy = [m for m in ('openai', 'anthropic', 'pyarrow', 'services.validation.sandbox', 'celery')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_help_lists_every_command() -> None:
    parser = build_parser(None)
    text = parser.format_help()
    for command in ("ingest", "generate", "export", "worker", "teacher-sim"):
        assert command in text
