"""The project's one token estimator: how many tokens a request will count before its usage is
known. The rate limiter's reservations (`workers.runtime`), a call's estimated cost in its claim
(`services.teachers.calls`) and a rationale's budget hold (`services.generation.budget`) all
come from here.

- Prompt tokens: `ceil(characters / 4)` of the system text and every turn, plus 4 a message
  (the system text counts as one) for the chat framing. The usual rule of thumb for English
  text with the OpenAI and Anthropic tokenizers; it errs by some percent either way, and every
  estimate made from it is settled afterwards with the usage the provider reports.
- Output tokens: `max_tokens` (what a provider itself reserves against a tokens-per-minute
  limit, and the most a call can cost) unless the ledger knows better: with at least
  `MIN_HISTORY` answered calls of the same teacher and prompt version in `teacher_calls`, the
  `PERCENTILE` of their output tokens (never above `max_tokens`). `OutputHistory` keeps that
  figure per process and reads it again after `HISTORY_TTL_S` (sooner while the history is too
  short to use).

The teacher simulator counts prompt tokens its own way (`services.teachers.simulator.wire`),
because it stands for the provider and a provider's count is not ours to choose; its rule happens
to be the same one, so on the simulator the prompt estimate is exact (for the Anthropic wire the
system text is not a message there, so ours is 4 tokens high).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from db.queries.teachers import recent_output_tokens
from services.kpdd.prompts import RenderedPrompt

if TYPE_CHECKING:
    from services.teachers.base import TeacherClient

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
# Output estimates from history: this percentile of the last HISTORY_SIZE answers, once there are
# at least MIN_HISTORY of them.
PERCENTILE = 0.99
MIN_HISTORY = 10
HISTORY_SIZE = 400
HISTORY_TTL_S = 30.0
SHORT_HISTORY_TTL_S = 0.5


def text_tokens(chars: int) -> int:
    """Tokens of `chars` characters of text."""
    return math.ceil(max(0, chars) / CHARS_PER_TOKEN)


def prompt_tokens(prompt: RenderedPrompt) -> int:
    """Estimated input tokens of `prompt` (system text, demonstrations, the question)."""
    chars = len(prompt.system) + sum(len(str(m.get("content", ""))) for m in prompt.messages)
    return text_tokens(chars) + TOKENS_PER_MESSAGE * (len(prompt.messages) + 1)


def request_tokens(prompt: RenderedPrompt, max_tokens: int) -> int:
    """What a request counts against a tokens-per-minute limit before it is answered: its prompt
    plus `max_tokens`, as providers reserve it."""
    return prompt_tokens(prompt) + max_tokens


def percentile(values: Sequence[int], fraction: float) -> int:
    """The nearest-rank percentile of `values` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(slots=True)
class _Entry:
    value: int | None  # None: too little history
    expires: float


class OutputHistory:
    """Expected output tokens per (teacher, prompt version), from the ledger (module doc).
    Thread-safe; one per process is enough (`output_history()`)."""

    def __init__(
        self,
        percentile_: float = PERCENTILE,
        min_history: int = MIN_HISTORY,
        size: int = HISTORY_SIZE,
        ttl_s: float = HISTORY_TTL_S,
    ) -> None:
        self.percentile = percentile_
        self.min_history = min_history
        self.size = size
        self.ttl_s = ttl_s
        self._entries: dict[tuple[str, str, str, str], _Entry] = {}
        self._lock = threading.Lock()

    def expected(
        self, engine: Engine, provider: str, model: str, prompt_version: str, max_tokens: int
    ) -> int:
        """Output tokens to expect from one call: the history's percentile, or `max_tokens`."""
        key = (str(engine.url), provider, model, prompt_version)
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry.expires <= now:
            with engine.connect() as conn:
                observed = recent_output_tokens(conn, provider, model, prompt_version, self.size)
            value = percentile(observed, self.percentile) if len(observed) >= self.min_history else None
            ttl = self.ttl_s if value is not None else min(self.ttl_s, SHORT_HISTORY_TTL_S)
            entry = _Entry(value, now + ttl)
            with self._lock:
                self._entries[key] = entry
        return max_tokens if entry.value is None else max(1, min(entry.value, max_tokens))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_HISTORY = OutputHistory()


def expected_cost(
    engine: Engine, client: TeacherClient, prompt: RenderedPrompt, *, batch: bool = False
) -> Decimal | None:
    """What one call of `client` with `prompt` may cost (None without a price): its prompt, and
    the output the ledger's history of this teacher and prompt expects; `batch`: at the
    provider's batch price."""
    if client.price is None:
        return None
    tokens_out = output_history().expected(
        engine, client.provider, client.spec.model, prompt.version, client.spec.options.max_tokens
    )
    return client.price.cost(prompt_tokens(prompt), tokens_out, batch=batch)


def output_history() -> OutputHistory:
    """This process's `OutputHistory`."""
    return _HISTORY


__all__ = [
    "CHARS_PER_TOKEN",
    "MIN_HISTORY",
    "PERCENTILE",
    "OutputHistory",
    "expected_cost",
    "output_history",
    "percentile",
    "prompt_tokens",
    "request_tokens",
    "text_tokens",
]
