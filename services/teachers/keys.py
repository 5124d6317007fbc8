"""API keys: read from the environment when a client is built, and nowhere else.

A key is read from the provider's own variable (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`) or from
the variable a spec names with `api_key_env=VARIABLE`. It is handed to the SDK client and to
the client's scrubber, and is never part of a spec, a setting, a log record, a database row or
an error message: errors name the variable, never its value.
"""

from __future__ import annotations

import os

from services.errors import ConfigError

DEFAULT_KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def read_key(variable: str, teacher: str) -> str:
    """The key in `variable`; ConfigError naming the variable (not a value) when unset or empty."""
    value = os.environ.get(variable, "").strip()
    if not value:
        raise ConfigError(
            f"teacher {teacher} needs an API key in the environment variable {variable}, which is "
            f"not set: export {variable}=... "
            "(or name another variable with --teacher-option api_key_env=NAME)"
        )
    return value


def check_key(provider: str, api_key_env: str | None, teacher: str) -> None:
    """Fail now, naming the variable, if the teacher will need a key that is not set (used
    before a job is queued, so a missing key never surfaces hours later in a worker)."""
    variable = api_key_env or DEFAULT_KEY_VARIABLES.get(provider)
    if variable is not None:
        read_key(variable, teacher)


__all__ = ["DEFAULT_KEY_VARIABLES", "check_key", "read_key"]
