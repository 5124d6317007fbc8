"""The corpus formats, as a dict registry: format name -> loader class."""

from __future__ import annotations

from services.corpora.base import CorpusLoader
from services.corpora.benchmarks import ASDivLoader, MultiArithLoader, SVAMPLoader
from services.corpora.generic import CsvLoader, JsonLinesLoader
from services.corpora.gsm8k import GSM8KLoader
from services.errors import BadInputError

LOADERS: dict[str, type[CorpusLoader]] = {
    cls.format: cls
    for cls in (GSM8KLoader, SVAMPLoader, ASDivLoader, MultiArithLoader, JsonLinesLoader, CsvLoader)
}


def get_loader(format_name: str) -> type[CorpusLoader]:
    try:
        return LOADERS[format_name]
    except KeyError:
        raise BadInputError(
            f"unknown corpus format {format_name!r}; choose one of: {', '.join(sorted(LOADERS))}"
        ) from None
