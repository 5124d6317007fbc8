"""Provider name -> client class, and `build_client`, the one way to get a ready teacher.

`build_client` checks everything that can be checked before a request is sent: the spec and its
options (`spec.parse_spec`), the key's variable (a `ConfigError` naming it), the settings; and
it looks up the model's price. Add a provider by writing a `TeacherClient` subclass and adding
it to `CLIENTS` (and an options model to `spec.OPTIONS_MODELS`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from services.config import Settings, get_settings
from services.teachers.anthropic_client import AnthropicMessagesClient
from services.teachers.base import RetryPolicy, TeacherClient, TeacherRequest, TeacherResponse
from services.teachers.errors import TeacherCallError
from services.teachers.openai_client import OpenAIChatClient, OpenAICompatibleClient
from services.teachers.pricing import PriceTable, load_prices
from services.teachers.sim_client import SimTeacherClient
from services.teachers.spec import TeacherSpec, parse_spec

CLIENTS: dict[str, type[TeacherClient]] = {
    "openai": OpenAIChatClient,
    "anthropic": AnthropicMessagesClient,
    "openai-compatible": OpenAICompatibleClient,
    "sim": SimTeacherClient,
}


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.teacher_max_attempts,
        backoff_s=settings.teacher_backoff_s,
        backoff_max_s=settings.teacher_backoff_max_s,
        retry_after_max_s=settings.teacher_retry_after_max_s,
    )


def build_client(
    spec: TeacherSpec | str,
    *,
    options: Mapping[str, str] | None = None,
    settings: Settings | None = None,
    prices: PriceTable | None = None,
    database_url: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    before_attempt: Callable[[TeacherRequest], None] | None = None,
    on_failure: Callable[[TeacherCallError], None] | None = None,
    after_response: Callable[[TeacherRequest, TeacherResponse], None] | None = None,
) -> TeacherClient:
    """A client for `spec` (a parsed spec, or its text plus `options` given separately).

    `database_url` is where an embedded simulator (`sim:` without a URL) reads its problems;
    `sleep` and `rng` are the backoff's clock and dice (tests pass recorders); `before_attempt`
    runs before every HTTP attempt (a rate limiter's take, a budget check), `on_failure`
    after every failed one (a shared back-off on 429) and `after_response` after every answered
    one (the limiter settles its estimate with the usage). Raises
    BadInputError for a bad spec or option and ConfigError for a missing key or bad setting,
    before any request is sent. The caller closes the client (`with build_client(...) as c:`).
    """
    if isinstance(spec, str):
        spec = parse_spec(spec, options)
    elif options:
        raise ValueError("options are given with a spec string; a parsed spec already has them")
    settings = settings or get_settings()
    prices = prices or load_prices(settings.prices_file)
    kwargs: dict[str, Any] = {
        "price": prices.price_of(spec.provider, spec.model),
        "retry": retry_policy(settings),
        "timeout_s": settings.teacher_timeout_s,
        "sleep": sleep,
        "rng": rng,
        "before_attempt": before_attempt,
        "on_failure": on_failure,
        "after_response": after_response,
    }
    if spec.provider == "sim":
        kwargs["sim_url"] = settings.sim_url
        kwargs["database_url"] = database_url
    return CLIENTS[spec.provider](spec, **kwargs)


__all__ = ["CLIENTS", "build_client", "retry_policy"]
