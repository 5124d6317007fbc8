"""The two errors evaluation raises, classified by what the caller does next.

`EvalInputError`: the input is wrong (model directory, `kpdd_student.json`, items file, a flag);
the message names the file, line or flag and the fix, and the CLI exits 2. `EvalRunError`:
something failed while running (the program sandbox cannot run programs); the CLI exits 1.
Per-item failures (an unparseable output, a crashing program) are never errors: they are data
in the predictions.
"""

from __future__ import annotations


class EvalError(Exception):
    """Base class: reported by the CLI as one line `kpdd: error: ...`."""

    exit_code = 1


class EvalInputError(EvalError, ValueError):
    """Bad input or flags; nothing was evaluated."""

    exit_code = 2


class EvalRunError(EvalError, RuntimeError):
    """A failure while evaluating that is not an item's (the sandbox went away)."""

    exit_code = 1
