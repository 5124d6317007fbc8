"""`kpdd` entry point.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds its parser
and sets `handler=<function(args) -> int>`. Errors are mapped here, once: a `KpddError` becomes
one line on stderr and its exit code (2 bad input or config, 1 failure while running); argparse
usage errors exit 2 as well.

Only the module of the command being run is imported (`COMMANDS` maps each command to its
module): `kpdd corpora` does not pay for importing the SDKs, the sandbox or pyarrow, and a
generation-only install never imports the training stack. `kpdd --help` (or no command, or a
misspelt one) imports no command module at all: it lists `SUMMARIES`, which a test keeps equal to
the help each module registers. Command modules import their heavy dependencies inside their
handlers, so `kpdd generate --help` is light too.

Every parser refuses abbreviated options (`--lim` for `--limit`): a later option sharing the
prefix would silently change what an old command line means. Help shows each option's default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from services.errors import KpddError

# command -> the module that registers it (a test checks this table against the modules).
COMMANDS = {
    "db": "services.cli.db_cmd",
    "ingest": "services.cli.corpora_cmd",
    "corpora": "services.cli.corpora_cmd",
    "validate": "services.cli.validate_cmd",
    "teacher-sim": "services.cli.teacher_sim_cmd",
    "probe": "services.cli.probe_cmd",
    "cache": "services.cli.cache_cmd",
    "generate": "services.cli.generate_cmd",
    "worker": "services.cli.generate_cmd",
    "status": "services.cli.jobs_cmd",
    "resume": "services.cli.jobs_cmd",
    "cancel": "services.cli.jobs_cmd",
    "export": "services.cli.export_cmd",
    "snapshots": "services.cli.export_cmd",
    "snapshot": "services.cli.export_cmd",
    "train": "services.cli.train_cmd",
    "runs": "services.cli.train_cmd",
    "run": "services.cli.train_cmd",
    "eval": "services.cli.eval_cmd",
    "serve": "services.cli.serve_cmd",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))

# command -> its one-line help, as its module registers it (a test checks they agree).
SUMMARIES = {
    "db": "database schema: upgrade, current",
    "ingest": "load a corpus file into the database (one transaction)",
    "corpora": "list corpora with problem counts per split",
    "validate": "judge a JSON-lines file of CoT responses / PoT programs against gold answers",
    "teacher-sim": "run the teacher simulator (OpenAI + Anthropic APIs) with latency, limits and faults",
    "probe": "send a few problems to a teacher: key points, right or wrong, cost, latency",
    "cache": "show or prune the response cache (stored teacher responses)",
    "generate": "queue a generation job over a corpus",
    "worker": "start a Celery worker (needs KPDD_BROKER_URL)",
    "status": "progress of a job, or a list of recent jobs",
    "resume": "re-queue every unfinished chunk of a job (after a crash)",
    "cancel": "stop a job; its pending problems are not started",
    "export": "write a filtered, reproducible dataset snapshot (Parquet or JSON lines)",
    "snapshots": "list the recorded dataset snapshots",
    "snapshot": "work with one snapshot directory",
    "train": "train a student on a snapshot with DeepSpeed",
    "runs": "list training runs",
    "run": "show or cancel one training run",
    "eval": "evaluate a trained student on math word-problem test sets",
    "serve": "run the HTTP API, the dashboard and /metrics",
}


class HelpFormatter(argparse.HelpFormatter):
    """Appends an option's default to its help, unless the help already says it or there is
    none worth showing (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and "%(default)" not in text
            and "default" not in text
            and default not in (None, False, argparse.SUPPRESS, [], ())
        ):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """The parser of `kpdd` and of every (sub)command: no abbreviated options, defaults in help.
    Subparsers inherit the class, so modules get it without asking."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(command: str | None = None, *, overview: bool = False) -> argparse.ArgumentParser:
    """The parser with `command`'s module registered, or every module when it is not a known
    command. With `overview`, an unknown command registers no module: each command is then a
    bare entry with its summary, enough for `kpdd --help` and for argparse to list the commands
    after a typo, without importing any command module."""
    parser = Parser(
        prog="kpdd",
        description="Key-Point-Driven Distillation: generate, validate and export math rationales, "
        "train and evaluate students.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if command not in COMMANDS and overview:
        for name, summary in SUMMARIES.items():
            sub.add_parser(name, help=summary)
        return parser
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
    parser = build_parser(_command_of(argv), overview=True)
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
