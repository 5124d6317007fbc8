"""`kpdd` entry point.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds its parser
and sets `handler=<function(args) -> int>`. Errors are mapped here, once: a `KpddError` becomes
one line on stderr and its exit code (2 bad input or config, 1 failure while running); argparse
usage errors exit 2 as well.

Only the module of the command being run is imported (`COMMANDS` maps each command to its
module): `kpdd corpora` does not pay for importing the SDKs, the sandbox or pyarrow, and a
generation-only install never imports the training stack. `kpdd --help` imports them all.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from services.errors import KpddError

# command -> the module that registers it (a test checks this table against the modules).
COMMANDS = {
    "db": "services.cli.db_cmd",
    "ingest": "services.cli.corpora_cmd",
    "corpora": "services.cli.corpora_cmd",
    "validate": "services.cli.validate_cmd",
    "teacher-sim": "services.cli.teacher_sim_cmd",
    "probe": "services.cli.probe_cmd",
    "generate": "services.cli.generate_cmd",
    "worker": "services.cli.generate_cmd",
    "status": "services.cli.generate_cmd",
    "resume": "services.cli.generate_cmd",
    "cancel": "services.cli.generate_cmd",
    "export": "services.cli.export_cmd",
    "snapshots": "services.cli.export_cmd",
    "snapshot": "services.cli.export_cmd",
    "train": "services.cli.train_cmd",
    "runs": "services.cli.train_cmd",
    "run": "services.cli.train_cmd",
    "eval": "services.cli.eval_cmd",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command`'s module registered, or every module when it is not a known
    command (no command, `--help`, a typo: argparse then lists every command)."""
    parser = argparse.ArgumentParser(
        prog="kpdd",
        description="Key-Point-Driven Distillation: generate, validate and export math rationales, "
        "train and evaluate students.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = (COMMANDS[command],) if command in COMMANDS else COMMAND_MODULES
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The first argument that is not an option of `kpdd` itself."""
    return next((a for a in argv if not a.startswith("-")), None)


def configure_logging(verbose: bool) -> None:
    """Log to stderr: warnings and errors, or everything with `-v`."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
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
