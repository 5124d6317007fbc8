"""`kpdd` entry point.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds its parser
and sets `handler=<function(args) -> int>`. Errors are mapped here, once: a `KpddError` becomes
one line on stderr and its exit code (2 bad input or config, 1 failure while running); argparse
usage errors exit 2 as well. Modules are imported lazily by name so `kpdd --help` stays fast and
a generation-only install never imports the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from services.errors import KpddError

COMMAND_MODULES = (
    "services.cli.db_cmd",
    "services.cli.corpora_cmd",
    "services.cli.validate_cmd",
    "services.cli.teacher_sim_cmd",
    "services.cli.probe_cmd",
    "services.cli.generate_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpdd",
        description="Key-Point-Driven Distillation: generate, validate and export math rationales.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command not built yet in this checkout
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or 0)
    except KpddError as exc:
        print(f"kpdd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kpdd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`kpdd corpora --json | head`): not an error of ours.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
