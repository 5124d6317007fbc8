"""API keys: read from the environment when a client is built, and nowhere else.

A key is read from the provider's own variable (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`) or from
the variable a spec names with `api_key_env=VARIABLE`. It is handed to the SDK client and to
the client's scrubber, and is never part of a spec, a setting, a log record, a database row or
an error message: errors name the variable, never its value.

`api_key_env` may name only a variable that holds a provider key (`key_variable_problem`): an
upper-case name ending in `_API_KEY`, `_KEY` or `_TOKEN`, that is neither one of kpdd's own
settings (`KPDD_*`: `api_key_env=KPDD_DATABASE_URL` would send the database URL, password
included, as a bearer token to the teacher's host) nor a well-known infrastructure credential
(`AWS_*`, `GITHUB_*`, ...; see `REFUSED_KEY_PREFIXES`). The rule is about names, so it cannot
tell a provider key from another secret that happens to be named like one.
"""

from __future__ import annotations

import os
import re

from services.errors import ConfigError

DEFAULT_KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}

KEY_VARIABLE_SUFFIXES = ("_API_KEY", "_KEY", "_TOKEN")
# kpdd's own settings, then variables of cloud, CI and package-registry credentials that a worker
# host may hold and that must never be sent to a teacher's host.
REFUSED_KEY_PREFIXES = (
    "KPDD_",
    "AWS_",
    "AZURE_CLIENT_",
    "GITHUB_",
    "GH_",
    "GITLAB_",
    "CI_",
    "ACTIONS_",
    "RUNNER_",
    "DOCKER_",
    "NPM_",
    "PYPI_",
    "TWINE_",
    "SSH_",
)
KEY_VARIABLE_RULE = (
    "an upper-case variable name ending in _API_KEY, _KEY or _TOKEN, not starting with "
    + ", ".join(REFUSED_KEY_PREFIXES)
)
_UPPER_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


def key_variable_problem(variable: str) -> str | None:
    """Why `variable` may not be named by `api_key_env`, or None when it may."""
    if not _UPPER_NAME_RE.match(variable):
        return "it is not an upper-case variable name"
    refused = next((p for p in REFUSED_KEY_PREFIXES if variable.startswith(p)), None)
    if refused is not None:
        if refused == "KPDD_":
            return "KPDD_ variables are kpdd's own settings, not provider keys"
        return f"{refused} variables hold infrastructure credentials, not provider keys"
    if not variable.endswith(KEY_VARIABLE_SUFFIXES):
        return "it does not end in _API_KEY, _KEY or _TOKEN, so it does not look like a key variable"
    return None


def read_key(variable: str, teacher: str) -> str:
    """The key in `variable`; ConfigError naming the variable (not a value) when unset or empty,
    or when `variable` is not one a key may come from (`key_variable_problem`)."""
    problem = key_variable_problem(variable)
    if problem is not None:
        raise ConfigError(
            f"teacher {teacher} may not read its API key from {variable}: {problem}; "
            f"api_key_env must name {KEY_VARIABLE_RULE}"
        )
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


__all__ = [
    "DEFAULT_KEY_VARIABLES",
    "KEY_VARIABLE_RULE",
    "KEY_VARIABLE_SUFFIXES",
    "REFUSED_KEY_PREFIXES",
    "check_key",
    "key_variable_problem",
    "read_key",
]
