"""Decontamination: drop training problems whose question overlaps an evaluation question.

Evaluation sets are named on the command line (`--decontaminate NAME ...`):

- `gsm8k-test`, `gsm8k-train`, `svamp`, `asdiv`, `multiarith`: the original files under
  `Settings().datasets_dir` (`../shared/datasets` by default), read with the corpus loaders, so
  an item's id is the loader's source id (GSM8K: the 0-based line number; SVAMP `chal-12`; ASDiv
  `nluds-0001`; MultiArith `iIndex`).
- any other name: an ingested corpus, `NAME` (every split) or `NAME/SPLIT`; `db:NAME[/SPLIT]`
  forces the database when an ingested corpus has one of the names above. Item ids are
  `SPLIT/SOURCE_ID`.

Measure. A question is NFKC-normalised, lower-cased and split into words (runs of letters and
digits); its n-grams are the distinct runs of n consecutive words (a question shorter than n
words is one gram). A training problem's overlap with an evaluation question is the share of its
own n-grams that also occur in that evaluation question; the problem is dropped when its best
overlap is at least the threshold. Defaults: n = 10, threshold = 0.2. On the real data these drop
7 of GSM8K's 7,473 train problems against GSM8K test, SVAMP, ASDiv and MultiArith, every one a
templated copy with other numbers or names (see docs/snapshots.md); a verbatim copy scores 1.0.
The best match is reported; ties go to the earlier evaluation set (names sorted) and then the
earlier item in it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from db.models import Corpus, Problem
from services.corpora.base import SourceProblem
from services.corpora.registry import get_loader
from services.errors import BadInputError

# name -> (loader format, path under the datasets folder)
BUILTIN_EVAL_SETS: dict[str, tuple[str, str]] = {
    "gsm8k-test": ("gsm8k", "gsm8k/test.jsonl"),
    "gsm8k-train": ("gsm8k", "gsm8k/train.jsonl"),
    "svamp": ("svamp", "svamp/SVAMP.json"),
    "asdiv": ("asdiv", "asdiv/ASDiv.xml"),
    "multiarith": ("multiarith", "multiarith/MultiArith.json"),
}
DB_PREFIX = "db:"
_WORD_RE = re.compile(r"[^\W_]+")


def question_words(question: str) -> list[str]:
    return _WORD_RE.findall(unicodedata.normalize("NFKC", question).lower())


def question_ngrams(question: str, n: int) -> set[str]:
    """The distinct word n-grams of a question (one gram when it has fewer than n words)."""
    words = question_words(question)
    if len(words) <= n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass(slots=True)
class EvalSet:
    """One evaluation set: where it came from, a fingerprint of its content, its questions."""

    name: str
    source: str
    items: list[tuple[str, str]]  # (item id, question), in source order
    sha256: str
    skipped: int = 0
    # The gold answer of each item, as the source wrote it (None: the item has none); evaluation
    # judges students against these, decontamination does not read them.
    golds: list[str | None] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "items": len(self.items),
            "sha256": self.sha256,
            "skipped_records": self.skipped,
        }


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_builtin(name: str, datasets_dir: Path, flag: str) -> EvalSet:
    format_name, relative = BUILTIN_EVAL_SETS[name]
    path = datasets_dir / relative
    if not path.exists():
        raise BadInputError(
            f"{flag} {name}: {path} not found; set KPDD_DATASETS_DIR to the folder holding "
            "the original corpora (../shared/datasets)"
        )
    items: list[tuple[str, str]] = []
    golds: list[str | None] = []
    skipped = 0
    for record in get_loader(format_name)(path).iter_problems():
        if isinstance(record, SourceProblem):
            items.append((record.source_id, record.question))
            golds.append(record.gold_answer)
        else:
            skipped += 1
    return EvalSet(name, f"datasets/{relative}", items, _file_sha256(path), skipped, golds)


def _load_corpus(conn: Connection, name: str, flag: str) -> EvalSet:
    reference = name.removeprefix(DB_PREFIX)
    corpus_name, _, split = reference.partition("/")
    corpus_id = conn.scalar(select(Corpus.id).where(Corpus.name == corpus_name))
    if corpus_id is None:
        known = ", ".join(conn.scalars(select(Corpus.name).order_by(Corpus.name))) or "none"
        raise BadInputError(
            f"{flag} {name}: not an evaluation set ({', '.join(BUILTIN_EVAL_SETS)}) nor an "
            f"ingested corpus (corpora: {known}); give one of these, or CORPUS/SPLIT"
        )
    stmt = select(
        Problem.split, Problem.source_id, Problem.question, Problem.content_hash, Problem.gold_answer
    ).where(Problem.corpus_id == corpus_id)
    if split:
        stmt = stmt.where(Problem.split == split)
    rows = conn.execute(stmt.order_by(Problem.id)).all()
    if not rows:
        splits = ", ".join(
            conn.scalars(select(Problem.split).where(Problem.corpus_id == corpus_id).distinct())
        )
        raise BadInputError(f"{flag} {name}: corpus {corpus_name!r} has no split {split!r} ({splits})")
    digest = hashlib.sha256()
    items = []
    golds: list[str | None] = []
    for row in rows:
        items.append((f"{row.split}/{row.source_id}", str(row.question)))
        golds.append(row.gold_answer)
        digest.update(f"{row.split}/{row.source_id}\x1f{row.content_hash}\n".encode())
    return EvalSet(name, f"corpus {reference}", items, digest.hexdigest(), golds=golds)


def resolve_eval_sets(
    names: tuple[str, ...], datasets_dir: Path, conn: Connection, flag: str = "--decontaminate"
) -> list[EvalSet]:
    """Load every named evaluation set, in the given order; BadInputError for an unknown name,
    naming `flag` (the option the names came from)."""
    sets = []
    for name in names:
        if name in BUILTIN_EVAL_SETS:
            sets.append(_load_builtin(name, datasets_dir, flag))
        else:
            sets.append(_load_corpus(conn, name, flag))
    return sets


@dataclass(slots=True)
class Match:
    """The best-matching evaluation item, and how many items reach the threshold in all."""

    dataset: str
    eval_id: str
    overlap: float
    matches: int = 1


@dataclass(slots=True)
class Decontaminator:
    """An n-gram index over evaluation questions; `check(question)` gives the best match at or
    above the threshold, or None. Builds in well under a second for the four evaluation sets."""

    sets: list[EvalSet]
    n: int
    threshold: float
    _index: dict[str, list[int]] = field(default_factory=dict)
    _items: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for eval_set in self.sets:
            for item_id, question in eval_set.items:
                position = len(self._items)
                self._items.append((eval_set.name, item_id))
                for gram in question_ngrams(question, self.n):
                    self._index.setdefault(gram, []).append(position)

    def check(self, question: str) -> Match | None:
        grams = question_ngrams(question, self.n)
        if not grams:
            return None
        hits: Counter[int] = Counter()
        for gram in grams:
            positions = self._index.get(gram)
            if positions:
                hits.update(positions)
        if not hits:
            return None
        position, count = min(hits.items(), key=lambda item: (-item[1], item[0]))
        overlap = count / len(grams)
        if overlap < self.threshold:
            return None
        dataset, eval_id = self._items[position]
        matches = sum(1 for n in hits.values() if n / len(grams) >= self.threshold)
        return Match(dataset, eval_id, overlap, matches)


@dataclass(slots=True)
class DecontamReport:
    """What decontamination did: its settings, the evaluation sets, and every dropped problem."""

    n: int
    threshold: float
    datasets: list[dict[str, Any]]
    checked_problems: int = 0
    dropped_rationales: int = 0
    dropped: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ngram": self.n,
            "threshold": self.threshold,
            "datasets": self.datasets,
            "checked_problems": self.checked_problems,
            "dropped_problems": len(self.dropped),
            "dropped_rationales": self.dropped_rationales,
            "dropped": self.dropped,
        }


__all__ = [
    "BUILTIN_EVAL_SETS",
    "DecontamReport",
    "Decontaminator",
    "EvalSet",
    "Match",
    "question_ngrams",
    "resolve_eval_sets",
]
