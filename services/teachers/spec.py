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
  request's fingerprint).

`api_key_env` names a variable; the key itself never appears in a spec, an option or a row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.errors import BadInputError

PROVIDERS = ("openai", "anthropic", "openai-compatible", "sim")
DEFAULT_MAX_TOKENS = 1024

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+=*-]*$")


class TeacherOptions(BaseModel):
    """Options every provider takes. Values from the command line arrive as strings and are
    converted ("0.2" -> 0.2); anything unknown is rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Options that shape the request (and therefore its fingerprint); the others do not.
    generation_fields: ClassVar[tuple[str, ...]] = ("temperature", "top_p", "max_tokens")

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=200_000)
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME_RE.pattern)
    # Shared rate limits for this (provider, model), enforced across every worker (not sent).
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)

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


def parse_option_pairs(pairs: Iterable[str], where: str = "--teacher-option") -> dict[str, str]:
    """`["temperature=0.2", ...]` -> `{"temperature": "0.2"}`; a pair without `=` or a key given
    twice is a BadInputError."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadInputError(f"{where} {pair!r}: expected OPTION=VALUE, e.g. temperature=0.2")
        if key in out:
            raise BadInputError(f"teacher option {key!r} is given twice; give it once")
        out[key] = value.strip()
    return out


def parse_spec(text: str, extra_options: Mapping[str, str] | None = None) -> TeacherSpec:
    """Parse `PROVIDER:MODEL[@BASE_URL][,OPTION=VALUE]...` plus options given separately.

    Raises BadInputError naming the part that is wrong (provider, model, URL or option)."""
    raw = text.strip()
    head, *option_parts = raw.split(",")
    provider, sep, rest = head.partition(":")
    provider = provider.strip().lower()
    if not sep or not rest.strip():
        raise BadInputError(
            f"teacher spec {text!r}: expected PROVIDER:MODEL, e.g. openai:gpt-4o-mini or sim:gold"
        )
    if provider not in PROVIDERS:
        raise BadInputError(
            f"teacher spec {text!r}: unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}"
        )
    model, at, base_url = rest.partition("@")
    model = model.strip()
    if not _MODEL_RE.match(model):
        raise BadInputError(f"teacher spec {text!r}: {model!r} is not a model name")
    url = _check_base_url(text, base_url.strip()) if at else None
    if provider == "openai-compatible" and url is None:
        raise BadInputError(
            f"teacher spec {text!r}: an openai-compatible teacher needs its server, "
            "e.g. openai-compatible:Qwen2.5-72B-Instruct@http://host:8000/v1"
        )
    options = parse_option_pairs(option_parts, where=f"teacher spec {text!r}: option")
    for key, value in (extra_options or {}).items():
        if key in options:
            raise BadInputError(
                f"teacher option {key!r} is given twice (in the spec and as --teacher-option)"
            )
        options[key] = value
    return TeacherSpec(provider, model, url, build_options(provider, options))


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
        shown = values.get(name)
        raise BadInputError(f"teacher option {name}={shown!r} is invalid: {error['msg']}") from None


def _check_base_url(text: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadInputError(f"teacher spec {text!r}: base URL {url!r} must look like http://host:port/v1")
    if parts.username or parts.password:
        # A URL is stored and printed; credentials belong in the key variable.
        raise BadInputError(
            f"teacher spec {text!r}: the base URL must not carry credentials; "
            "put the key in a variable and name it with api_key_env=VARIABLE"
        )
    return url.rstrip("/")


__all__ = [
    "DEFAULT_MAX_TOKENS",
    "OPTIONS_MODELS",
    "PROVIDERS",
    "AnthropicOptions",
    "OpenAIOptions",
    "TeacherOptions",
    "TeacherSpec",
    "build_options",
    "parse_option_pairs",
    "parse_spec",
]
