"""Error classes shared by every service, classified by what the caller should do next.

The CLI maps them once: `BadInputError` and `ConfigError` exit with code 2 (fix the input or
configuration and run again), `RunFailure` with code 1 (something failed while running).
Messages are written for a human: they name the file, line or field and say how to fix it.
"""

from __future__ import annotations


class KpddError(Exception):
    """Base class of the errors the CLI reports as one line on stderr."""

    exit_code = 1


class BadInputError(KpddError):
    """The user's input (a file, a flag, a record) is wrong; nothing was written."""

    exit_code = 2


class ConfigError(KpddError):
    """A setting or environment variable is missing or invalid."""

    exit_code = 2


class RunFailure(KpddError):
    """Something failed while running (a server went away, a write failed)."""

    exit_code = 1
