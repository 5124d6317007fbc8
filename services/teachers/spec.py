"""Teacher specs: which provider and model to call, where, and with which generation options.

Syntax (one string, what `--teacher` takes and what a generation job stores)::

    PROVIDER:MODEL[@BASE_URL][,OPTION=VALUE]...

    openai:gpt-4o-mini
    anthropic:claude-3-5-haiku-latest,temperature=0.2,max_tokens=800
    openai-compatible:Qwen2.5-72B-Instruct@http://host:8000/v1,api_key_env=VLLM_KEY
    sim:gold

Providers are `openai`, `anthropic`, `openai-compatible` (needs `@BASE_URL`) and `sim` (the
project's teacher simulator; `sim:gold` answers from the gold solutions). `@BASE_URL` may be
given to any provider (a proxy, a gateway, the simulator in tests). On the command line, options
may also be given as repeated `--teacher-option OPTION=VALUE`; an option given twice, in either
place, is an error.

Options are checked against one pydantic model per provider with `extra="forbid"`, before any
call: an unknown option, or a value out of range, fails with a `BadInputError` naming it.

- every provider: `temperature`, `top_p`, `max_tokens` (default 1024), `api_key_env` (the
  variable holding the key, e.g. `api_key_env=MY_TEAM_OPENAI_KEY`);
- `openai`, `openai-compatible`, `sim`: `seed`;
- `anthropic`: `top_k` (no `seed`: Anthropic has none);
- every provider: `rpm`, `tpm`: requests and tokens per minute allowed for this (provider,
  model), enforced by the workers' shared rate limiter (they are not sent, nor part of a
  request's fingerprint). Finite, `rpm` from 1 to 10,000,000 and `tpm` from 100 to
  10,000,000,000 (`RPM_RANGE`, `TPM_RANGE`): a tinier limit would make the limiter wait for
  days per request, or overflow its arithmetic.
- every provider: `batch=true`: in a generation job, send this teacher's requests through the
  provider's batch API (OpenAI Batch, Anthropic Message Batches; `services.teachers.batching`)
  at batch prices; `kpdd generate --transport batch` sets it on every teacher. Not sent, not
  part of a request's fingerprint.

`api_key_env` names a variable; the key itself never appears in a spec, an option or a row. It
may name only a key variable (`keys.key_variable_problem`: upper-case, ending in `_API_KEY`,
`_KEY` or `_TOKEN`, never `KPDD_*`). A base URL may not carry a credential either: no user info
(`http://user:pass@host`) and no query parameter named like one (`CREDENTIAL_QUERY_WORDS`).

A spec may not hold a control character (NUL, a newline, a tab...: `CONTROL_CHARS_RE`) and a
model name may not be longer than `MAX_MODEL_CHARS` (the database column): both are refused here,
in one line, before anything is stored or sent, rather than failing a worker later.

Error messages echo the spec with secrets masked (`redact_spec`): the user info of a URL,
everything between its first and last `@`, and every query string become `[redacted]`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.errors import BadInputError
from services.teachers.keys import DEFAULT_KEY_VARIABLES, KEY_VARIABLE_RULE, key_variable_problem

PROVIDERS = ("openai", "anthropic", "openai-compatible", "sim")
DEFAULT_MAX_TOKENS = 1024
# Bounds of the shared rate limits (per minute), inclusive.
RPM_RANGE = (1.0, 10_000_000.0)
TPM_RANGE = (100.0, 10_000_000_000.0)
# A base-URL query parameter whose lower-cased name contains one of these carries a credential.
CREDENTIAL_QUERY_WORDS = ("key", "token", "secret", "pass", "pwd", "auth", "credential", "signature", "sig")

# The length of the `model` columns of teacher_calls and rationales.
MAX_MODEL_CHARS = 256
# C0 and C1 control characters and DEL: never part of a model, URL or option value.
CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+=*-]*$")
# Only a value shaped like an environment variable name is echoed for api_key_env: anything else
# may be the key itself, pasted in the wrong place.
_SHOWABLE_VARIABLE_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,99}$")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_RANGE_RULES = {
    "rpm": f"requests per minute: a finite number from {RPM_RANGE[0]:,.0f} to {RPM_RANGE[1]:,.0f}",
    "tpm": f"tokens per minute: a finite number from {TPM_RANGE[0]:,.0f} to {TPM_RANGE[1]:,.0f}",
}


class TeacherOptions(BaseModel):
    """Options every provider takes. Values from the command line arrive as strings and are
    converted ("0.2" -> 0.2); anything unknown is rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Options that shape the request (and therefore its fingerprint); the others do not.
    generation_fields: ClassVar[tuple[str, ...]] = ("temperature", "top_p", "max_tokens")

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=200_000)
    api_key_env: str | None = None
    # Shared rate limits for this (provider, model), enforced across every worker (not sent).
    rpm: float | None = Field(default=None, ge=RPM_RANGE[0], le=RPM_RANGE[1], allow_inf_nan=False)
    tpm: float | None = Field(default=None, ge=TPM_RANGE[0], le=TPM_RANGE[1], allow_inf_nan=False)
    # Send this teacher's requests of a generation job through the provider's batch API (at
    # batch prices, answered within hours) instead of one HTTP call each (not sent, nor part of
    # a request's fingerprint: a batch answer and an online one are the same cache entry).
    batch: bool = False

    @field_validator("api_key_env")
    @classmethod
    def _only_key_variables(cls, value: str | None) -> str | None:
        problem = None if value is None else key_variable_problem(value)
        if problem is not None:
            raise ValueError(f"{problem}; it must be {KEY_VARIABLE_RULE}, e.g. api_key_env=VLLM_API_KEY")
        return value

    def generation(self) -> dict[str, Any]:
        """The options sent to the provider, without unset ones, in a stable order."""
        out = {name: getattr(self, name) for name in self.generation_fields}
        return {k: v for k, v in sorted(out.items()) if v is not None}


class OpenAIOptions(TeacherOptions):
    generation_fields: ClassVar[tuple[str, ...]] = ("temperature", "top_p", "max_tokens", "seed")

    seed: int | None = None


class AnthropicOptions(TeacherOptions):
    generation_fields: ClassVar[tuple[str, ...]] = ("temperature", "top_p", "max_tokens", "top_k")

    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)


OPTIONS_MODELS: dict[str, type[TeacherOptions]] = {
    "openai": OpenAIOptions,
    "openai-compatible": OpenAIOptions,
    "sim": OpenAIOptions,
    "anthropic": AnthropicOptions,
}


@dataclass(slots=True, frozen=True)
class TeacherSpec:
    """A parsed, checked teacher spec. `label` (`provider:model`) is the teacher's identity in
    the database; `base_url` says where it is reached and is not part of that identity."""

    provider: str
    model: str
    base_url: str | None = None
    options: TeacherOptions = field(default_factory=TeacherOptions)

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.model}"

    def to_text(self) -> str:
        """The spec back as one string that `parse_spec` reads to an equal spec."""
        text = self.label + (f"@{self.base_url}" if self.base_url else "")
        given = self.options.model_dump(exclude_unset=True)
        return text + "".join(f",{k}={v}" for k, v in sorted(given.items()))


def redact_spec(text: str) -> str:
    """`text` (a spec, a URL) fit for an error message: the user info of a URL (from `://` to
    the last `@`), everything between the first and the last `@` (a URL's user info without a
    scheme) and every query string and fragment (to the end of the text) become `[redacted]`.
    Over-redacts rather than leak: a password may hold `/`, `@` or `,`."""
    shown = re.sub(r"://.*@", "://[redacted]@", text, flags=re.S)
    first, last = shown.find("@"), shown.rfind("@")
    if first < last:
        scheme = _SCHEME_RE.match(shown[first + 1 : last])
        shown = shown[: first + 1] + (scheme.group(0) if scheme else "") + "[redacted]" + shown[last:]
    return re.sub(r"([?#]).*", r"\1[redacted]", shown, flags=re.S)


def _redact_url(url: str) -> str:
    """A base URL alone, redacted: any `@` in it ends user info, with or without a scheme."""
    return redact_spec("@" + url)[1:]


def parse_option_pairs(
    pairs: Iterable[str], where: str = "--teacher-option", *, echo_pair: bool = True
) -> dict[str, str]:
    """`["temperature=0.2", ...]` -> `{"temperature": "0.2"}`; a pair without `=` or a key given
    twice is a BadInputError. With `echo_pair=False` a bad pair is named by its position only
    (it may be a piece of a URL's password, cut at a comma)."""
    out: dict[str, str] = {}
    for number, pair in enumerate(pairs, start=1):
        _refuse_control_chars(pair.strip(), f"{where} #{number}")
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            named = repr(pair) if echo_pair else f"#{number}"
            raise BadInputError(f"{where} {named}: expected OPTION=VALUE, e.g. temperature=0.2")
        if key in out:
            raise BadInputError(f"teacher option {key!r} is given twice; give it once")
        out[key] = value.strip()
    return out


def parse_spec(text: str, extra_options: Mapping[str, str] | None = None) -> TeacherSpec:
    """Parse `PROVIDER:MODEL[@BASE_URL][,OPTION=VALUE]...` plus options given separately.

    Raises BadInputError naming the part that is wrong (provider, model, URL or option). Its
    message shows the spec through `redact_spec`, never a credential of its URL."""
    raw = text.strip()
    _refuse_control_chars(raw, "teacher spec")
    shown = redact_spec(raw)
    head, *option_parts = raw.split(",")
    provider, sep, rest = head.partition(":")
    provider = provider.strip().lower()
    if not sep or not rest.strip():
        raise BadInputError(
            f"teacher spec {shown!r}: expected PROVIDER:MODEL, e.g. openai:gpt-4o-mini or sim:gold"
        )
    if provider not in PROVIDERS:
        raise BadInputError(
            f"teacher spec {shown!r}: unknown provider {redact_spec(provider)!r}; "
            f"use one of {', '.join(PROVIDERS)}"
        )
    model, at, base_url = rest.partition("@")
    model = model.strip()
    # The model is not echoed on its own: `openai-compatible:http://user:pass@host` puts a
    # password in it, and only the whole spec is redacted reliably.
    if "://" in model:
        raise BadInputError(
            f"teacher spec {shown!r}: the model is missing or is a URL; write PROVIDER:MODEL@URL, "
            "e.g. openai-compatible:Qwen2.5-72B-Instruct@http://host:8000/v1"
        )
    if not _MODEL_RE.match(model):
        raise BadInputError(
            f"teacher spec {shown!r}: the part between PROVIDER: and @ is not a model name "
            "(letters, digits and ._:/+=*- only)"
        )
    if len(model) > MAX_MODEL_CHARS:
        raise BadInputError(
            f"teacher spec {shown[:80]!r}...: the model name is {len(model)} characters long; "
            f"at most {MAX_MODEL_CHARS} are allowed"
        )
    url = _check_base_url(shown, provider, base_url.strip()) if at else None
    if provider == "openai-compatible" and url is None:
        raise BadInputError(
            f"teacher spec {shown!r}: an openai-compatible teacher needs its server, "
            "e.g. openai-compatible:Qwen2.5-72B-Instruct@http://host:8000/v1"
        )
    options = parse_option_pairs(option_parts, where=f"teacher spec {shown!r}: option", echo_pair=False)
    for key, value in (extra_options or {}).items():
        if key in options:
            raise BadInputError(
                f"teacher option {key!r} is given twice (in the spec and as --teacher-option)"
            )
        options[key] = value
    return TeacherSpec(provider, model, url, build_options(provider, options))


def _refuse_control_chars(text: str, where: str) -> None:
    """BadInputError (one line, naming the character by code point and position, never echoing
    the text: it may hold a secret) when `text` holds a control character."""
    found = CONTROL_CHARS_RE.search(text)
    if found is not None:
        raise BadInputError(
            f"{where}: holds the control character U+{ord(found.group()):04X} at position "
            f"{found.start() + 1}; remove it (specs and options are plain printable text)"
        )


def build_options(provider: str, values: Mapping[str, Any]) -> TeacherOptions:
    """The checked options of `provider`; BadInputError names the first bad option."""
    model_cls = OPTIONS_MODELS[provider]
    try:
        return model_cls.model_validate(dict(values))
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "?"
        known = ", ".join(sorted(model_cls.model_fields))
        if error["type"] == "extra_forbidden":
            raise BadInputError(
                f"teacher option {name!r} is not supported by {provider} teachers (supported: {known})"
            ) from None
        given = values.get(name)
        if name == "api_key_env" and not (isinstance(given, str) and _SHOWABLE_VARIABLE_RE.match(given)):
            # Not a variable name: perhaps the key itself, which is never echoed.
            shown = "api_key_env (value not shown: it is not a variable name; is it the key itself?)"
        else:
            shown = f"{name}={given!r}"
        message = error["msg"]
        if error["type"] == "value_error":
            message = str(error.get("ctx", {}).get("error", message))
        rule = _RANGE_RULES.get(name)
        raise BadInputError(
            f"teacher option {shown} is invalid: {message}" + (f"; {name} must be {rule}" if rule else "")
        ) from None


def _credential_advice(provider: str) -> str:
    default = DEFAULT_KEY_VARIABLES.get(provider)
    if default is not None:
        return f"put the key in {default} (or in another key variable named with api_key_env=NAME)"
    return (
        "put the key in a variable such as MY_SERVER_API_KEY and name it with api_key_env=MY_SERVER_API_KEY"
    )


def _check_base_url(shown: str, provider: str, url: str) -> str:
    """The base URL, checked: http(s), a host, a valid port, no credential. `shown` is the
    redacted spec; neither `url` nor any exception about it (a bad port's message quotes it)
    reaches the error."""
    bad_shape = BadInputError(
        f"teacher spec {shown!r}: base URL {_redact_url(url)!r} must look like http://host:port/v1"
    )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise bad_shape from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_shape
    if parts.username is not None or parts.password is not None:
        # A URL is stored and printed; credentials belong in the key variable.
        raise BadInputError(
            f"teacher spec {shown!r}: the base URL must not carry credentials (user info); "
            + _credential_advice(provider)
        )
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        lowered = name.lower()
        if any(word in lowered for word in CREDENTIAL_QUERY_WORDS):
            raise BadInputError(
                f"teacher spec {shown!r}: the base URL must not carry credentials "
                f"(query parameter {name!r}); " + _credential_advice(provider)
            )
    return url.rstrip("/")


__all__ = [
    "CONTROL_CHARS_RE",
    "CREDENTIAL_QUERY_WORDS",
    "DEFAULT_MAX_TOKENS",
    "MAX_MODEL_CHARS",
    "OPTIONS_MODELS",
    "PROVIDERS",
    "RPM_RANGE",
    "TPM_RANGE",
    "AnthropicOptions",
    "OpenAIOptions",
    "TeacherOptions",
    "TeacherSpec",
    "build_options",
    "parse_option_pairs",
    "parse_spec",
    "redact_spec",
]
