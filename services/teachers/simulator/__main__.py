"""`python -m services.teachers.simulator [options]`: the same as `kpdd teacher-sim [options]`,
without importing the other commands (so a child process starts in a fraction of a second)."""

from __future__ import annotations

import argparse
import sys

from services.cli.main import configure_logging
from services.cli.teacher_sim_cmd import add_arguments, run_teacher_sim
from services.errors import KpddError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.teachers.simulator", description="The KPDD teacher simulator."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return run_teacher_sim(args)
    except KpddError as exc:
        print(f"kpdd teacher-sim: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
