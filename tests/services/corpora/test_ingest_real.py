"""The four real corpora ingest with exact counts and correct golds, on SQLite and Postgres."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.models import Corpus, Problem
from tests.conftest import CliResult

CORPORA = [
    ("gsm8k", "gsm8k/train.jsonl", "gsm8k", "train", 7473),
    ("gsm8k", "gsm8k/test.jsonl", "gsm8k", "test", 1319),
    ("svamp", "svamp/SVAMP.json", "svamp", "test", 1000),
    ("asdiv", "asdiv/ASDiv.xml", "asdiv", "test", 2305),
    ("multiarith", "multiarith/MultiArith.json", "multiarith", "test", 600),
]

# (corpus, split, source id) -> (gold as given, kind, normalised)
SPOT_CHECKS = {
    ("gsm8k", "train", "0"): ("72", "number", "72"),
    ("gsm8k", "train", "644"): ("109,200,000", "number", "109200000"),
    ("gsm8k", "train", "5715"): ("-7", "number", "-7"),
    ("gsm8k", "test", "0"): ("18", "number", "18"),
    ("svamp", "test", "chal-1"): ("51.0", "number", "51"),
    ("svamp", "test", "chal-1000"): ("11.0", "number", "11"),
    ("asdiv", "test", "nluds-0001"): ("9 (apples)", "number", "9"),
    ("asdiv", "test", "nluds-0176"): ("0.46 (dollars)", "number", "23/50"),
    ("asdiv", "test", "nluds-1312"): ("5/2", "number", "5/2"),
    ("asdiv", "test", "nluds-1331"): ("-(1/3)", "number", "-1/3"),
    ("asdiv", "test", "nluds-0076"): ("Yes", "text", "yes"),
    ("asdiv", "test", "nluds-0166"): ("3:30 p.m.", "text", "3:30 p.m"),
    ("asdiv", "test", "nluds-0853"): ("2:3", "text", "2:3"),
    ("asdiv", "test", "nluds-1394"): ("36 (years old); 12 (years old)", "text", "36; 12"),
    ("multiarith", "test", "0"): ("39.0", "number", "39"),
    ("multiarith", "test", "599"): ("2.0", "number", "2"),
}


def _ingest_all(kpdd: Callable[..., CliResult], datasets_dir: Path) -> None:
    for fmt, rel, corpus, split, count in CORPORA:
        result = kpdd("ingest", fmt, datasets_dir / rel, "--corpus", corpus, "--split", split, "--json")
        assert result.code == 0, result.err
        report = orjson.loads(result.out)
        assert (report["read"], report["inserted"], report["skipped"]) == (count, count, 0)


def test_real_corpora_exact_counts_and_golds(
    kpdd: Callable[..., CliResult], db_url: str, datasets_dir: Path
) -> None:
    _ingest_all(kpdd, datasets_dir)

    listing = orjson.loads(kpdd("corpora", "--json").out)
    assert {c["name"]: c["splits"] for c in listing["corpora"]} == {
        "asdiv": {"test": 2305},
        "gsm8k": {"test": 1319, "train": 7473},
        "multiarith": {"test": 600},
        "svamp": {"test": 1000},
    }
    asdiv = next(c for c in listing["corpora"] if c["name"] == "asdiv")
    assert asdiv["gold_kinds"] == {"number": 2093, "text": 212}

    engine = create_engine(db_url)
    with Session(engine) as session:
        rows = session.execute(
            select(
                Corpus.name,
                Problem.split,
                Problem.source_id,
                Problem.gold_answer,
                Problem.gold_kind,
                Problem.gold_normalised,
            ).join(Corpus)
        ).all()
        found = {(r[0], r[1], r[2]): (r[3], r[4], r[5]) for r in rows}
        for key, expected in SPOT_CHECKS.items():
            assert found[key] == expected, key
        gsm = session.execute(
            select(Problem.question, Problem.worked_solution, Problem.content_hash)
            .join(Corpus)
            .where(Corpus.name == "gsm8k", Problem.split == "train", Problem.source_id == "0")
        ).one()
        assert gsm.question.startswith("Natalia sold clips to 48 of her friends in April")
        assert gsm.worked_solution.endswith("#### 72")
        assert len(gsm.content_hash) == 64
        svamp_extra = session.scalar(
            select(Problem.extra).join(Corpus).where(Corpus.name == "svamp", Problem.source_id == "chal-1")
        )
        assert svamp_extra == {"equation": "( 76.0 - 25.0 )", "type": "Subtraction"}
        # Nothing but GSM8K carries a worked solution.
        assert session.scalar(select(func.count()).where(Problem.worked_solution.is_not(None))) == 7473 + 1319
    engine.dispose()


def test_reingesting_changes_nothing(kpdd: Callable[..., CliResult], db_url: str, datasets_dir: Path) -> None:
    path = datasets_dir / "svamp" / "SVAMP.json"
    assert kpdd("ingest", "svamp", path, "--corpus", "svamp").code == 0
    engine = create_engine(db_url)
    with Session(engine) as session:
        before = session.execute(select(Problem.id, Problem.content_hash, Problem.created_at)).all()
    again = kpdd("ingest", "svamp", path, "--corpus", "svamp", "--json")
    assert again.code == 0
    report = orjson.loads(again.out)
    assert (report["read"], report["inserted"], report["unchanged"]) == (1000, 0, 1000)
    with Session(engine) as session:
        after = session.execute(select(Problem.id, Problem.content_hash, Problem.created_at)).all()
        assert session.scalar(select(func.count()).select_from(Corpus)) == 1
    assert sorted(after) == sorted(before)
    engine.dispose()


def test_partial_overlap_inserts_only_new_rows(kpdd: Callable[..., CliResult], tmp_path: Path) -> None:
    first = tmp_path / "a.jsonl"
    first.write_text("".join(f'{{"id": "p{i}", "question": "q{i}?", "answer": "{i}"}}\n' for i in range(5)))
    bigger = tmp_path / "b.jsonl"
    bigger.write_text("".join(f'{{"id": "p{i}", "question": "q{i}?", "answer": "{i}"}}\n' for i in range(8)))
    assert kpdd("ingest", "jsonl", first, "--corpus", "c", "--id-field", "id").code == 0
    result = kpdd("ingest", "jsonl", bigger, "--corpus", "c", "--id-field", "id", "--json")
    report = orjson.loads(result.out)
    assert (report["inserted"], report["unchanged"]) == (3, 5)
