"""Queries on corpora and problems."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Corpus, Problem


def get_or_create_corpus(session: Session, name: str, format_name: str) -> Corpus:
    corpus = session.scalar(select(Corpus).where(Corpus.name == name))
    if corpus is None:
        corpus = Corpus(name=name, format=format_name)
        session.add(corpus)
        session.flush()
    return corpus


def count_split(session: Session, corpus_id: int, split: str) -> int:
    return (
        session.scalar(select(func.count()).where(Problem.corpus_id == corpus_id, Problem.split == split))
        or 0
    )


@dataclass(slots=True)
class CorpusSummary:
    name: str
    format: str
    splits: dict[str, int]
    gold_kinds: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.splits.values())


def corpus_summaries(session: Session) -> list[CorpusSummary]:
    """Every corpus with its problem counts per split and per gold kind, by name."""
    summaries = {
        c.name: CorpusSummary(c.name, c.format, {}, {})
        for c in session.scalars(select(Corpus).order_by(Corpus.name))
    }
    by_split = session.execute(
        select(Corpus.name, Problem.split, func.count())
        .join(Problem, Problem.corpus_id == Corpus.id)
        .group_by(Corpus.name, Problem.split)
        .order_by(Corpus.name, Problem.split)
    )
    for name, split, count in by_split:
        summaries[name].splits[split] = count
    by_kind = session.execute(
        select(Corpus.name, Problem.gold_kind, func.count())
        .join(Problem, Problem.corpus_id == Corpus.id)
        .group_by(Corpus.name, Problem.gold_kind)
        .order_by(Corpus.name, Problem.gold_kind)
    )
    for name, kind, count in by_kind:
        summaries[name].gold_kinds[kind] = count
    return list(summaries.values())
