"""Per-problem filters: duplicate removal and the cap on rationales per problem.

Both work on one problem's rationales at a time (`query.stream_problem_groups`), separately for
each mode: a CoT text and a PoT program are different training targets and never compared.

- **Exact duplicates**: two solutions (the CoT text, or the program) that are equal once every
  run of whitespace is one space and the ends are stripped. The first in stream order is kept.
- **Near duplicates**: the solution is lower-cased and split into tokens (runs of letters and
  digits, and single punctuation marks, so `48/2` and `48 / 2` tokenise alike); two solutions
  are near duplicates when the Jaccard similarity of their token 3-gram sets is at least the
  threshold (a solution shorter than 3 tokens is one "gram"). A solution is dropped when it is a
  near duplicate of one already kept, comparing in stream order.
- Rationales without a solution (possible with `--verdict all`: unparsed or failed calls) are
  never duplicates: they have nothing to compare.
- **Cap** (`--max-per-problem N`): at most N rationales per (problem, mode). Candidates are taken
  in the order (sample index, provider, model, prompt version, rationale id), so the lowest
  samples go first and several teachers are interleaved; a first pass takes only solutions whose
  whitespace-normalised text has not been taken yet (distinct solutions first), a second pass
  fills the remaining places in the same order. The kept rows stay in stream order.

Everything is a pure function of the rows, so the same rows always give the same choice.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.export.query import RationaleRow

SHINGLE = 3
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


@dataclass(slots=True)
class FilterCounts:
    """Rationales each per-problem filter dropped."""

    exact_duplicates: int = 0
    near_duplicates: int = 0
    over_cap: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "over_cap": self.over_cap,
        }


def normalise_solution(text: str | None) -> str:
    """The solution with whitespace runs collapsed to one space and the ends stripped."""
    return " ".join(text.split()) if text else ""


def shingles(text: str, n: int = SHINGLE) -> frozenset[tuple[str, ...]]:
    """The set of token n-grams of `text` (lower-cased); one gram when shorter than n tokens."""
    tokens = _TOKEN_RE.findall(text.lower())
    if len(tokens) < n:
        return frozenset([tuple(tokens)])
    return frozenset(zip(*(tokens[i:] for i in range(n)), strict=False))  # the shorter lists end it


def jaccard(a: frozenset[tuple[str, ...]], b: frozenset[tuple[str, ...]]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def _by_mode(rows: list[RationaleRow]) -> dict[str, list[RationaleRow]]:
    out: dict[str, list[RationaleRow]] = {}
    for row in rows:
        out.setdefault(row.mode, []).append(row)
    return out


def dedupe(rows: list[RationaleRow], near_threshold: float, counts: FilterCounts) -> list[RationaleRow]:
    """`rows` (one problem, stream order) without exact and near-duplicate solutions."""
    kept: list[RationaleRow] = []
    seen: dict[str, set[str]] = {}
    # Per mode: [normalised text, its shingles or None until a comparison needs them].
    previous: dict[str, list[list[Any]]] = {}
    for row in rows:
        if not row.solution:
            kept.append(row)
            continue
        norm = normalise_solution(row.solution)
        mode_seen = seen.setdefault(row.mode, set())
        if norm in mode_seen:
            counts.exact_duplicates += 1
            continue
        earlier = previous.setdefault(row.mode, [])
        grams = None
        if earlier:
            grams = shingles(norm)
            near = False
            for entry in earlier:
                if entry[1] is None:
                    entry[1] = shingles(entry[0])
                if jaccard(grams, entry[1]) >= near_threshold:
                    near = True
                    break
            if near:
                counts.near_duplicates += 1
                continue
        mode_seen.add(norm)
        earlier.append([norm, grams])
        kept.append(row)
    return kept


def _cap_order(row: RationaleRow) -> tuple[int, str, str, str, int]:
    return (row.sample_index, row.provider, row.model, row.prompt_version, row.rationale_id)


def cap(rows: list[RationaleRow], limit: int, counts: FilterCounts) -> list[RationaleRow]:
    """At most `limit` of `rows` (one problem) per mode, chosen as the module docstring says."""
    groups = _by_mode(rows)
    if all(len(g) <= limit for g in groups.values()):
        return rows
    chosen: set[int] = set()
    for group in groups.values():
        if len(group) <= limit:
            chosen.update(r.rationale_id for r in group)
            continue
        ordered = sorted(group, key=_cap_order)
        taken: list[RationaleRow] = []
        texts: set[str] = set()
        for row in ordered:
            norm = normalise_solution(row.solution)
            if len(taken) < limit and norm not in texts:
                taken.append(row)
                texts.add(norm)
        taken_ids = {r.rationale_id for r in taken}
        for row in ordered:
            if len(taken) >= limit:
                break
            if row.rationale_id not in taken_ids:
                taken.append(row)
                taken_ids.add(row.rationale_id)
        counts.over_cap += len(group) - len(taken)
        chosen.update(taken_ids)
    return [r for r in rows if r.rationale_id in chosen]


def problem_filter(
    dedupe_enabled: bool, near_threshold: float, max_per_problem: int | None, counts: FilterCounts
) -> Callable[[list[RationaleRow]], list[RationaleRow]] | None:
    """The per-problem filter the spec asks for (dedupe, then cap), or None when there is none."""
    if not dedupe_enabled and max_per_problem is None:
        return None

    def apply(rows: list[RationaleRow]) -> list[RationaleRow]:
        if dedupe_enabled:
            rows = dedupe(rows, near_threshold, counts)
        if max_per_problem is not None:
            rows = cap(rows, max_per_problem, counts)
        return rows

    return apply


__all__ = ["FilterCounts", "cap", "dedupe", "jaccard", "normalise_solution", "problem_filter", "shingles"]
