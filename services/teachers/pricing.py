"""Token prices, and the cost of a call in dollars.

The price table is data: `prices.json` next to this module (US dollars per million input and
output tokens, keyed `PROVIDER:MODEL`, a trailing `*` matching any suffix such as a dated
snapshot; the longest matching key wins), with the entries of the file named by
`KPDD_PRICES_FILE` laid over it. A model without a price has cost `None` ("unknown"), never 0:
a self-hosted `openai-compatible` teacher is unpriced unless a price file says otherwise.

Batch prices (OpenAI Batch, Anthropic Message Batches): an entry may give `batch_input` and
`batch_output`; without them a batch call costs half the online price, which is what both
providers charge today (`BATCH_DISCOUNT`).

Costs are exact `Decimal`s, rounded to 1e-8 dollars (the database column's scale).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from services.errors import ConfigError

SHIPPED_PRICES = Path(__file__).resolve().parent / "prices.json"
COST_QUANTUM = Decimal("0.00000001")
_MILLION = Decimal(1_000_000)
BATCH_DISCOUNT = Decimal("0.5")


@dataclass(slots=True, frozen=True)
class ModelPrice:
    """Dollars per million tokens. `key` is the table entry it came from."""

    key: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    batch_input_per_mtok: Decimal | None = None  # None: BATCH_DISCOUNT of the online price
    batch_output_per_mtok: Decimal | None = None

    def cost(self, tokens_in: int, tokens_out: int, *, batch: bool = False) -> Decimal:
        """Dollars for a call; `batch`: at the provider's batch price."""
        price_in, price_out = self.input_per_mtok, self.output_per_mtok
        if batch:
            price_in = (
                self.batch_input_per_mtok
                if self.batch_input_per_mtok is not None
                else price_in * BATCH_DISCOUNT
            )
            price_out = (
                self.batch_output_per_mtok
                if self.batch_output_per_mtok is not None
                else price_out * BATCH_DISCOUNT
            )
        raw = (tokens_in * price_in + tokens_out * price_out) / _MILLION
        return raw.quantize(COST_QUANTUM)


@dataclass(slots=True)
class PriceTable:
    entries: dict[str, ModelPrice]
    sources: list[str]

    def price_of(self, provider: str, model: str) -> ModelPrice | None:
        """The price of `provider:model`: an exact key, else the longest `*` pattern matching."""
        label = f"{provider}:{model}"
        exact = self.entries.get(label)
        if exact is not None:
            return exact
        best: ModelPrice | None = None
        for key, price in self.entries.items():
            if (
                key.endswith("*")
                and label.startswith(key[:-1])
                and (best is None or len(key) > len(best.key))
            ):
                best = price
        return best


def usd_text(amount: Decimal | None) -> str | None:
    """A dollar amount as plain decimal text for JSON, to 1e-8 (`"0.00018765"`, never `"0E-8"`)."""
    return None if amount is None else format(amount.quantize(COST_QUANTUM), "f")


def load_prices(override: Path | None = None) -> PriceTable:
    """The shipped table with `override`'s entries laid over it. ConfigError names a bad file."""
    entries = _read(SHIPPED_PRICES, "the shipped price table")
    sources = [str(SHIPPED_PRICES)]
    if override is not None:
        entries.update(_read(override, "KPDD_PRICES_FILE"))
        sources.append(str(override))
    return PriceTable(entries, sources)


def _read(path: Path, what: str) -> dict[str, ModelPrice]:
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; fix or unset KPDD_PRICES_FILE") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path} is not readable JSON: {exc}") from None
    models = document.get("models") if isinstance(document, dict) else None
    if not isinstance(models, dict):
        raise ConfigError(
            f'{what} {path} must be {{"models": {{"PROVIDER:MODEL": {{"input": 0.15, "output": 0.6}}}}}} '
            "with dollars per million tokens"
        )
    out: dict[str, ModelPrice] = {}
    for key, value in models.items():
        if ":" not in key:
            raise ConfigError(f"{what} {path}: key {key!r} must be PROVIDER:MODEL (e.g. openai:gpt-4o-mini)")
        try:
            price_in = Decimal(str(value["input"]))
            price_out = Decimal(str(value["output"]))
        except (KeyError, TypeError, InvalidOperation):
            raise ConfigError(
                f"{what} {path}: {key!r} needs numeric 'input' and 'output' dollars per million tokens"
            ) from None
        batch_prices: list[Decimal | None] = []
        for name in ("batch_input", "batch_output"):
            given = value.get(name)
            try:
                batch_prices.append(None if given is None else Decimal(str(given)))
            except InvalidOperation:
                raise ConfigError(f"{what} {path}: {key!r} has a non-numeric {name!r}") from None
        prices = [price_in, price_out, *(p for p in batch_prices if p is not None)]
        if any(p < 0 or not p.is_finite() for p in prices):
            raise ConfigError(f"{what} {path}: {key!r} has a negative or non-finite price")
        out[key] = ModelPrice(key, price_in, price_out, batch_prices[0], batch_prices[1])
    return out


__all__ = [
    "BATCH_DISCOUNT",
    "COST_QUANTUM",
    "SHIPPED_PRICES",
    "ModelPrice",
    "PriceTable",
    "load_prices",
    "usd_text",
]
