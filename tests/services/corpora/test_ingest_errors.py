"""Bad input: one clear error naming file, line and field, exit code 2, and nothing written.

Every case runs on SQLite and on Postgres, and checks the database is exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.models import Corpus, Problem
from tests.conftest import CliResult

GOOD = '{"question": "Tom has 2 apples and buys 3. How many?", "answer": "Tom has 5.\\n#### 5"}\n'


def _counts(db_url: str) -> tuple[int, int]:
    engine = create_engine(db_url)
    with Session(engine) as session:
        counts = (
            session.scalar(select(func.count()).select_from(Corpus)) or 0,
            session.scalar(select(func.count()).select_from(Problem)) or 0,
        )
    engine.dispose()
    return counts


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# (case id, format, file content, extra flags, fragments the one-line message must contain)
CASES = [
    ("malformed-line", "gsm8k", GOOD + '{"question": "broken\n' + GOOD, [], ["line 2", "malformed JSON"]),
    ("not-an-object", "gsm8k", GOOD + "[1, 2]\n", [], ["line 2", "expected a JSON object"]),
    ("missing-question", "gsm8k", GOOD + GOOD + '{"answer": "#### 4"}\n', [], ["line 3", "field 'question'"]),
    (
        "missing-final-answer",
        "gsm8k",
        GOOD + '{"question": "q?", "answer": "no marker"}\n',
        [],
        ["line 2", "field 'answer'", "####"],
    ),
    (
        "unparseable-gold",
        "gsm8k",
        GOOD + '{"question": "q?", "answer": "x\\n#### seven"}\n',
        [],
        ["line 2", "field 'answer'", "'seven' is not a number"],
    ),
    (
        "wrong-encoding",
        "gsm8k",
        GOOD.encode() + '{"question": "caf\xe9?", "answer": "#### 1"}\n'.encode("latin-1"),
        [],
        ["line 2", "UTF-8"],
    ),
    (
        "jsonl-missing-answer-field",
        "jsonl",
        '{"question": "q?", "answer": "1"}\n{"question": "r?"}\n',
        [],
        ["line 2", "field 'answer'", "missing"],
    ),
    (
        "jsonl-numeric-gold",
        "jsonl",
        '{"question": "q?", "answer": "1"}\n{"question": "r?", "answer": "n/a"}\n',
        ["--numeric-gold"],
        ["line 2", "field 'answer'", "not a number"],
    ),
    (
        "jsonl-duplicate-id",
        "jsonl",
        '{"id": "a", "question": "q?", "answer": "1"}\n{"id": "a", "question": "r?", "answer": "2"}\n',
        ["--id-field", "id"],
        ["line 2", "duplicate id 'a' (first at line 1)"],
    ),
    (
        "csv-missing-column",
        "csv",
        "question,solution\nq?,1\n",
        [],
        ["line 1", "no column 'answer'", "--answer-field"],
    ),
    ("csv-empty-cell", "csv", "question,answer\nq?,1\nr?,\n", [], ["line 3", "field 'answer'", "empty"]),
    ("svamp-not-array", "svamp", '{"ID": "x"}', [], ["expected a JSON array"]),
    (
        "svamp-missing-body",
        "svamp",
        '[{"ID": "s1", "Body": "b", "Question": "q?", "Answer": 1.0},'
        '{"ID": "s2", "Question": "q?", "Answer": 2.0}]',
        [],
        ["record s2", "field 'Body'"],
    ),
    (
        "multiarith-bad-solutions",
        "multiarith",
        '[{"iIndex": 7, "sQuestion": "q?", "lSolutions": []}]',
        [],
        ["record 7", "field 'lSolutions'"],
    ),
    (
        "asdiv-malformed-xml",
        "asdiv",
        "<Machine-Reading-Corpus-File><ProblemSet><Problem ID='a'>\n<Body>x",
        [],
        ["line", "malformed XML"],
    ),
    (
        "asdiv-missing-answer",
        "asdiv",
        "<P><ProblemSet><Problem ID='nluds-9'><Body>b</Body>"
        "<Question>q?</Question></Problem></ProblemSet></P>",
        [],
        ["record nluds-9", "field 'Answer'"],
    ),
    (
        "nul-in-question",
        "gsm8k",
        GOOD + '{"question": "Tom has 2\\u0000 apples?", "answer": "#### 2"}\n',
        [],
        ["line 2", "field 'question'", "NUL character"],
    ),
    (
        "jsonl-nul-in-answer",
        "jsonl",
        '{"question": "q?", "answer": "1"}\n{"question": "r?", "answer": "a\\u0000b"}\n',
        [],
        ["line 2", "field 'answer'", "NUL character"],
    ),
    (
        "svamp-nul-in-equation",
        "svamp",
        '[{"ID": "s1", "Body": "b", "Question": "q?", "Answer": 1.0, "Equation": "( 1 \\u0000)"}]',
        [],
        ["record s1", "field 'equation'", "NUL character"],
    ),
    (
        "gold-of-100000-digits",
        "gsm8k",
        GOOD + '{"question": "q?", "answer": "x\\n#### ' + "9" * 100_000 + '"}\n',
        [],
        ["line 2", "field 'answer'", "100,000 characters", "longer than the 1,000 allowed"],
    ),
    (
        "jsonl-text-gold-too-long",
        "jsonl",
        '{"question": "q?", "answer": "' + "word " * 1000 + '"}\n',
        [],
        ["line 1", "field 'answer'", "longer than the 1,000 allowed"],
    ),
    ("empty-file", "gsm8k", "", [], ["the file is empty"]),
    ("only-blank-lines", "gsm8k", "\n\n  \n", [], ["no valid records"]),
]


@pytest.mark.parametrize(
    ("fmt", "content", "flags", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_reported_and_nothing_is_written(
    kpdd: Callable[..., CliResult],
    db_url: str,
    tmp_path: Path,
    fmt: str,
    content: str | bytes,
    flags: list[str],
    fragments: list[str],
) -> None:
    path = _write(tmp_path / f"corpus.{fmt}", content)
    before = _counts(db_url)
    result = kpdd("ingest", fmt, path, "--corpus", "bad", *flags)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("kpdd: error: ")
    assert str(path) in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert _counts(db_url) == before == (0, 0)


def test_missing_path_and_folder(kpdd: Callable[..., CliResult], db_url: str, tmp_path: Path) -> None:
    missing = kpdd("ingest", "gsm8k", tmp_path / "nope.jsonl", "--corpus", "x")
    assert missing.code == 2 and "nope.jsonl: no such file" in missing.err
    folder = kpdd("ingest", "gsm8k", tmp_path, "--corpus", "x")
    assert folder.code == 2 and "is a folder" in folder.err
    assert _counts(db_url) == (0, 0)


def test_unknown_format_and_missing_corpus_flag(kpdd: Callable[..., CliResult], tmp_path: Path) -> None:
    path = _write(tmp_path / "c.jsonl", GOOD)
    unknown = kpdd("ingest", "parquet", path, "--corpus", "x")
    assert unknown.code == 2 and "unknown corpus format 'parquet'" in unknown.err
    no_corpus = kpdd("ingest", "gsm8k", path)
    assert no_corpus.code == 2 and "--corpus" in no_corpus.err


def test_changed_record_under_same_id_is_refused(
    kpdd: Callable[..., CliResult], db_url: str, tmp_path: Path
) -> None:
    v1 = _write(tmp_path / "v1.jsonl", '{"id": "a", "question": "q?", "answer": "1"}\n')
    v2 = _write(
        tmp_path / "v2.jsonl",
        '{"id": "b", "question": "r?", "answer": "2"}\n'
        '{"id": "a", "question": "q changed?", "answer": "1"}\n',
    )
    assert kpdd("ingest", "jsonl", v1, "--corpus", "c", "--id-field", "id").code == 0
    result = kpdd("ingest", "jsonl", v2, "--corpus", "c", "--id-field", "id")
    assert result.code == 2
    assert (
        "line 2" in result.err and "'a' was already ingested in c/train with different content" in result.err
    )
    assert _counts(db_url) == (1, 1)  # the new record 'b' was not written either


def test_skip_invalid_ingests_good_rows_and_reports_each_bad_one(
    kpdd: Callable[..., CliResult], db_url: str, tmp_path: Path
) -> None:
    content = GOOD + "not json\n" + GOOD + '{"question": "q?"}\n' + '{"question": "z?", "answer": "#### x"}\n'
    path = _write(tmp_path / "mixed.jsonl", content)
    result = kpdd("ingest", "gsm8k", path, "--corpus", "mixed", "--skip-invalid", "--json")
    assert result.code == 0, result.err
    report = orjson.loads(result.out)
    assert (report["read"], report["inserted"], report["skipped"]) == (5, 2, 3)
    reasons = report["skipped_records"]
    assert "line 2" in reasons[0] and "malformed JSON" in reasons[0]
    assert "line 4" in reasons[1] and "field 'answer'" in reasons[1]
    assert "line 5" in reasons[2] and "'x' is not a number" in reasons[2]
    assert _counts(db_url) == (1, 2)

    # Human output: every skipped record on stderr, the summary on stdout.
    other = _write(tmp_path / "mixed2.jsonl", content)
    text_result = kpdd("ingest", "gsm8k", other, "--corpus", "mixed2", "--skip-invalid")
    assert text_result.err.count("skipped: ") == 3
    assert "5 read, 2 inserted, 0 unchanged, 3 skipped" in text_result.out


def test_skip_invalid_skips_nul_and_absurd_golds(
    kpdd: Callable[..., CliResult], db_url: str, tmp_path: Path
) -> None:
    content = (
        GOOD
        + '{"question": "q\\u0000?", "answer": "#### 1"}\n'
        + '{"question": "q?", "answer": "#### '
        + "1" * 100_000
        + '"}\n'
        + GOOD
    )
    path = _write(tmp_path / "mixed.jsonl", content)
    result = kpdd("ingest", "gsm8k", path, "--corpus", "mixed", "--skip-invalid", "--json")
    assert result.code == 0, result.err
    report = orjson.loads(result.out)
    assert (report["read"], report["inserted"], report["skipped"]) == (4, 2, 2)
    assert "line 2" in report["skipped_records"][0] and "NUL" in report["skipped_records"][0]
    assert "line 3" in report["skipped_records"][1] and "longer than" in report["skipped_records"][1]
    assert _counts(db_url) == (1, 2)
