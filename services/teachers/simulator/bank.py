"""The problems the simulator knows, keyed by the sha256 of the whitespace-normalised question.

Problems come from corpus files (`--corpus FORMAT:PATH`, read with the loaders of
`services.corpora.registry`) and/or from the kpdd database (`--from-db`, the `problems` table).
When two sources hold the same question with different golds, the first one loaded wins and the
conflict is counted. Rationales are derived on first use and cached.

The bank never invents an answer: `rationale_for` returns None for a question it does not hold,
or holds without a gold answer, and the server refuses such a request (422, see `app`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.corpora.base import BadRecord
from services.errors import BadInputError, ConfigError
from services.teachers.simulator.rationale import GoldProblem, SimRationale, derive_rationale

log = logging.getLogger(__name__)


def question_key(question: str) -> str:
    """sha256 hex of the question with runs of whitespace collapsed to one space."""
    return hashlib.sha256(" ".join(question.split()).encode("utf-8")).hexdigest()


@dataclass(slots=True, frozen=True)
class CorpusSource:
    format: str
    path: Path

    @classmethod
    def parse(cls, spec: str) -> CorpusSource:
        """`FORMAT:PATH`, e.g. `gsm8k:../shared/datasets/gsm8k/train.jsonl`."""
        fmt, sep, path = spec.partition(":")
        if not sep or not fmt or not path:
            raise BadInputError(
                f"--corpus {spec!r}: expected FORMAT:PATH, e.g. gsm8k:../shared/datasets/gsm8k/train.jsonl"
            )
        return cls(fmt.strip().lower(), Path(path))


class ProblemBank:
    def __init__(self) -> None:
        self._problems: dict[str, GoldProblem] = {}
        self._rationales: dict[str, SimRationale | None] = {}
        self.conflicts = 0

    def __len__(self) -> int:
        return len(self._problems)

    def add(self, problem: GoldProblem) -> bool:
        """Add a problem; False if its question was already known."""
        key = question_key(problem.question)
        known = self._problems.get(key)
        if known is not None:
            if known.gold_answer != problem.gold_answer:
                self.conflicts += 1
            return False
        self._problems[key] = problem
        return True

    def add_all(self, problems: Iterable[GoldProblem]) -> int:
        return sum(1 for p in problems if self.add(p))

    def load_corpus(self, source: CorpusSource) -> int:
        """Load one corpus file with its registered loader; bad records are skipped (and logged)."""
        from services.corpora.registry import get_loader

        loader = get_loader(source.format)(source.path)
        added = bad = 0
        for item in loader.iter_problems():
            if isinstance(item, BadRecord):
                bad += 1
                continue
            added += self.add(GoldProblem(item.question, item.gold_answer, item.worked_solution, item.extra))
        if bad:
            log.warning("%s: skipped %d bad records", source.path, bad)
        return added

    def load_database(self, url: str) -> int:
        """Load every problem of the kpdd database at `url`."""
        from sqlalchemy import make_url, select
        from sqlalchemy.exc import SQLAlchemyError

        from db.engine import get_engine
        from db.models.corpora import Problem

        query = select(Problem.question, Problem.gold_answer, Problem.worked_solution, Problem.extra)
        added = 0
        try:
            with get_engine(url).connect() as conn:
                for row in conn.execution_options(yield_per=5000).execute(query):
                    added += self.add(
                        GoldProblem(row.question, row.gold_answer, row.worked_solution, row.extra)
                    )
        except SQLAlchemyError as exc:
            where = make_url(url).render_as_string(hide_password=True)
            raise ConfigError(
                f"cannot read problems from the database {where} ({type(exc).__name__}); "
                "check KPDD_DATABASE_URL, run `kpdd db upgrade` and ingest a corpus first"
            ) from None
        return added

    def knows(self, question: str) -> bool:
        """Whether `question` is among the loaded problems (with or without a gold answer)."""
        return question_key(question) in self._problems

    def rationale_for(self, question: str) -> SimRationale | None:
        """The rationale for `question`, derived from its gold; None when the bank does not hold
        the question, or holds it without a gold answer (nothing to answer from)."""
        key = question_key(question)
        if key in self._rationales:
            return self._rationales[key]
        problem = self._problems.get(key)
        if problem is None:
            return None
        rationale = self._rationales[key] = derive_rationale(problem)
        return rationale
