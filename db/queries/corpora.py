"""Queries on corpora and problems."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

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


def first_problems(session: Session, corpus: str, split: str | None, limit: int) -> list[Problem]:
    """The first `limit` problems of a corpus (and split), in ingestion order."""
    query = select(Problem).join(Corpus, Corpus.id == Problem.corpus_id).where(Corpus.name == corpus)
    if split is not None:
        query = query.where(Problem.split == split)
    return list(session.scalars(query.order_by(Problem.id).limit(limit)))


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
    for name, split, count in _problem_counts(session, Problem.split):
        summaries[name].splits[split] = count
    for name, kind, count in _problem_counts(session, Problem.gold_kind):
        summaries[name].gold_kinds[kind] = count
    return list(summaries.values())


def _problem_counts(session: Session, column: InstrumentedAttribute[str]) -> list[tuple[str, str, int]]:
    """(corpus name, value of the problem column, problems) for each pair that has problems."""
    rows = session.execute(
        select(Corpus.name, column, func.count())
        .join(Problem, Problem.corpus_id == Corpus.id)
        .group_by(Corpus.name, column)
        .order_by(Corpus.name, column)
    )
    return [(name, value, count) for name, value, count in rows]
