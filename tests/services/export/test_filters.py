"""Per-problem filters: exact and near-duplicate removal and the cap, as pure functions and
through `kpdd export` on real simulator rationales edited in the database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from db.models import Rationale
from services.export.filters import FilterCounts, cap, dedupe, jaccard, normalise_solution, shingles
from services.export.query import RationaleRow
from tests.conftest import CliResult
from tests.services.export.conftest import read_manifest, read_rows

SOLUTION = (
    "Natalia sold 48 clips in April.\nIn May she sold 48 / 2 = 24 clips.\n"
    "Altogether she sold 48 + 24 = 72 clips in April and May, which is the total we want."
)


def row(
    rid: int, solution: str | None, *, mode: str = "cot", sample: int = 0, model: str = "gold"
) -> RationaleRow:
    return RationaleRow(
        rid, 1, 1, "g", "train", "0", "Q?", "72", "number", "72", f"sim:{model}", "sim", model, mode,
        "single", "v1", sample, "How many?", ["a"], solution, "72", "72", "valid", "match", "gold",
    )  # fmt: skip


def test_normalisation_and_similarity() -> None:
    assert normalise_solution("  a\n\n b\tc ") == "a b c"
    assert normalise_solution(None) == ""
    assert shingles("48/2 = 24") == shingles("48 / 2=24")  # spacing does not matter
    assert shingles("Two words") == frozenset([("two", "words")])
    assert jaccard(shingles(SOLUTION), shingles(SOLUTION)) == 1.0
    assert jaccard(shingles(SOLUTION), shingles("Something else entirely, with other words.")) == 0.0


def test_dedupe_drops_exact_then_near_duplicates_per_mode() -> None:
    near = SOLUTION + " Done."
    far = "Half of 48 is 24. So the total is 48 plus 24, which makes 72."
    rows = [
        row(1, SOLUTION),
        row(2, SOLUTION.replace("\n", "  \n ")),  # exact after whitespace normalisation
        row(3, near),  # near: one extra sentence
        row(4, far),  # different
        row(5, SOLUTION, mode="pot"),  # other mode: never compared with CoT
        row(6, None),  # no solution: nothing to compare, kept
        row(7, None),
    ]
    counts = FilterCounts()
    kept = dedupe(rows, 0.8, counts)
    assert [r.rationale_id for r in kept] == [1, 4, 5, 6, 7]
    assert (counts.exact_duplicates, counts.near_duplicates) == (1, 1)
    assert jaccard(shingles(SOLUTION), shingles(near)) >= 0.8

    strict = FilterCounts()
    assert [r.rationale_id for r in dedupe(rows, 0.99, strict)] == [1, 3, 4, 5, 6, 7]
    assert (strict.exact_duplicates, strict.near_duplicates) == (1, 0)


def test_cap_prefers_distinct_solutions_then_lowest_samples_and_interleaves_teachers() -> None:
    rows = [
        row(1, SOLUTION, sample=0),
        row(2, SOLUTION, sample=1),  # the same text as sample 0
        row(3, "another way", sample=2),
        row(4, "a third way", sample=3),
    ]
    counts = FilterCounts()
    assert [r.rationale_id for r in cap(rows, 2, counts)] == [1, 3]
    assert counts.over_cap == 2
    # Duplicates fill the remaining places once the distinct solutions run out.
    same = [row(i, SOLUTION, sample=i) for i in range(4)]
    assert [r.rationale_id for r in cap(same, 3, FilterCounts())] == [0, 1, 2]
    # Two teachers, cap 2: both sample 0s before any sample 1; output keeps stream order.
    teachers = [
        row(10, "a0", model="a", sample=0),
        row(11, "a1", model="a", sample=1),
        row(20, "b0", model="b", sample=0),
        row(21, "b1", model="b", sample=1),
    ]
    assert [r.rationale_id for r in cap(teachers, 2, FilterCounts())] == [10, 20]
    # Per mode: a cap of 1 keeps one CoT and one PoT.
    modes = [row(1, "x"), row(2, "y", sample=1), row(3, "x", mode="pot"), row(4, "z", mode="pot", sample=1)]
    assert [r.rationale_id for r in cap(modes, 1, FilterCounts())] == [1, 3]


def test_dedupe_and_cap_through_export(
    sqlite_kpdd: Callable[..., CliResult],
    sqlite_url: str,
    make_rationales: Callable[..., None],
    tmp_path: Path,
) -> None:
    kpdd = sqlite_kpdd
    make_rationales(kpdd, 3, samples=3, wrong=False)  # the 3 samples of a problem are identical
    engine = create_engine(sqlite_url)
    with Session(engine) as session, session.begin():
        cot = session.execute(
            select(Rationale.id, Rationale.problem_id, Rationale.sample_index, Rationale.solution_text)
            .where(Rationale.mode == "cot")
            .order_by(Rationale.problem_id, Rationale.sample_index)
        ).all()
        p1, p2 = sorted({r.problem_id for r in cot})[:2]
        first = {r.sample_index: r for r in cot if r.problem_id == p1}
        second = {r.sample_index: r for r in cot if r.problem_id == p2}
        # Problem 1, CoT: sample 1 becomes a near duplicate of sample 0, sample 2 a new solution.
        near_text = first[0].solution_text + " That is the answer."
        distinct_text = "A different route: count it all up at once and it comes to the same answer."
        # Problem 2, CoT: samples 0 and 1 stay identical, sample 2 becomes a new solution.
        other_text = "Yet another route, written out in other words, with the same final answer."
        for rid, text in ((first[1].id, near_text), (first[2].id, distinct_text), (second[2].id, other_text)):
            session.execute(update(Rationale).where(Rationale.id == rid).values(solution_text=text))
    engine.dispose()

    def per_group(name: str) -> dict[tuple[int, str], list[int]]:
        out: dict[tuple[int, str], list[int]] = {}
        for r in read_rows(tmp_path / name, "rationales"):
            out.setdefault((r["problem_id"], r["mode"]), []).append(r["sample_index"])
        return out

    # 3 problems x 2 modes x 3 samples = 18 rationales.
    assert kpdd("export", "--out", tmp_path / "dedupe", "--dedupe").code == 0
    filters = read_manifest(tmp_path / "dedupe")["filters"]
    assert (filters["exported"], filters["exact_duplicates"], filters["near_duplicates"]) == (8, 9, 1)
    assert filters["selected"] == 18 and filters["over_cap"] == filters["decontaminated"] == 0
    kept = per_group("dedupe")
    assert kept[(p1, "cot")] == [0, 2] and kept[(p2, "cot")] == [0, 2]
    assert all(v == [0] for k, v in kept.items() if k not in ((p1, "cot"), (p2, "cot")))
    texts = {r["solution"] for r in read_rows(tmp_path / "dedupe", "rationales") if r["problem_id"] == p1}
    assert distinct_text in texts and near_text not in texts

    # Cap 2 alone: distinct solutions first. Problem 2's CoT keeps samples 0 and 2 (sample 1
    # repeats sample 0); problem 1's three CoT texts all differ, so the lowest samples, 0 and 1.
    assert kpdd("export", "--out", tmp_path / "cap2", "--max-per-problem", "2").code == 0
    capped = per_group("cap2")
    assert capped[(p2, "cot")] == [0, 2] and capped[(p1, "cot")] == [0, 1]
    assert all(v == [0, 1] for k, v in capped.items() if k != (p2, "cot")) and len(capped) == 6
    assert read_manifest(tmp_path / "cap2")["filters"]["over_cap"] == 6

    # Dedupe then cap 1: exactly one per (problem, mode), the lowest sample.
    assert kpdd("export", "--out", tmp_path / "cap1", "--dedupe", "--max-per-problem", "1").code == 0
    assert all(v == [0] for v in per_group("cap1").values()) and len(per_group("cap1")) == 6
    assert read_manifest(tmp_path / "cap1")["filters"]["over_cap"] == 2
