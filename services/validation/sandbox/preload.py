"""What the fork-server imports once, and the environment that keeps numpy single-threaded."""

from __future__ import annotations

import importlib

THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
}
MATH_MODULES = ("math", "cmath", "fractions", "decimal", "itertools", "statistics")
SCIENTIFIC_MODULES = ("numpy", "numpy.linalg", "numpy.random", "sympy")
# Stdlib a program may reasonably import. Children run under another uid and, where the Python
# installation is not world-readable (pyenv under /root, mode 700), can import only what the
# server already holds; a normal installation lets them import the rest of the stdlib too.
STDLIB_MODULES = (
    "functools", "operator", "collections", "heapq", "bisect", "re", "string", "random", "datetime",
    "calendar", "numbers", "typing", "dataclasses", "copy", "json", "time", "io", "textwrap",
    "threading", "signal", "atexit", "ctypes", "socket", "encodings.idna", "subprocess", "importlib",
    "pathlib",
)  # fmt: skip
BASIC_PRELOAD = MATH_MODULES + STDLIB_MODULES
SCIENTIFIC_PRELOAD = BASIC_PRELOAD + SCIENTIFIC_MODULES


def preload(modules: list[str]) -> tuple[list[str], list[str]]:
    """Import `modules`; returns (loaded, failed), each failure as "name: error"."""
    loaded, failed = [], []
    for name in modules:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception as exc:  # a missing optional module must not stop the server
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    return loaded, failed
