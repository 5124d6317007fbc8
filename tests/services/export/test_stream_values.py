"""The Postgres fast path (COPY in CSV, parsed by pyarrow) against the general one (SQLAlchemy
rows): every value arrives exactly, the row filters bind the same, the files do not depend on
how the stream is cut into blocks, and rows come in code-point order whatever the columns'
collation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert, null, select, text, update
from sqlalchemy.orm import Session

from benchmarks.bench_export import populate
from db.engine import get_engine
from db.models import Corpus, Problem, Rationale
from services.cli.main import main
from services.export import query as query_module
from services.export.snapshot import export_snapshot
from services.export.spec import LAYOUTS, ExportSpec
from tests.conftest import CliResult
from tests.services.export.conftest import read_manifest, read_rows, snapshot_bytes

# Text that CSV, COPY or a JSON decoder could get wrong: delimiters, quotes, line breaks of every
# kind, backslashes, COPY's end marker, the words readers take for NULL, Unicode whitespace.
TRICKY = [
    'Plain, with "quotes", commas',
    "line one\nline two\r\nline three\rend",
    "back\\slash \\N and \\.",
    "\\.",
    "",
    "  \u2003padded with Unicode spaces\x1c\x1d\u3000 ",
    "emoji \U0001f9ee and accents café, ünïcödé",
    "tab\tseparated\tvalues",
    "NULL",
    "null",
    "NaN",
    '""',
    ",",
    "\x85next line\xa0nbsp",
    "ends with a backslash \\",
]
SQL_NULL = object()  # solving_info holding SQL NULL, not the JSON value null
TRICKY_CORPUS = 99
MODELS = ["Zeta", "alpha", "Alpha", "élan", "b"]  # C order: Alpha, Zeta, alpha, b, élan


def insert_tricky(url: str, texts: list[str], first_id: int = 1_000_000) -> None:
    """One problem per text, in corpus `tricky`, with rationales that put the text (or NULL, or
    the empty string) in every text column, under models whose order depends on collation."""
    engine = create_engine(url)
    problems: list[dict[str, Any]] = []
    rationales: list[dict[str, Any]] = []
    sql_null_info: list[int] = []
    for i, value in enumerate(texts):
        problem_id = first_id + i
        problems.append(
            {
                "id": problem_id,
                "corpus_id": TRICKY_CORPUS,
                "split": "test" if i % 2 else "train",
                "source_id": f"{problem_id} {value}",
                "question": value if i % 3 == 0 else f"Q{i}: {value}",
                "gold_answer": None if i % 4 == 0 else value,
                "gold_kind": "text",
                "gold_normalised": "" if i % 5 == 0 else value,
                "content_hash": f"h{i}",
            }
        )
        variants: list[tuple[Any, ...]] = [
            # model, mode, sample, core question, solving info, solution text, final answer,
            # program, verdict
            ("Zeta", "cot", 0, value, [value, "x " + value], "steps " + value, value, None, "valid"),
            ("alpha", "cot", 0, value or None, [] if i % 2 else SQL_NULL, value, value + "!", None, "valid"),
            ("Alpha", "pot", 0, "cq " + value, [value], None, None, "ans = 1  # " + value, "valid"),
            ("élan", "pot", 1, "cq " + value, [value], None, None, "ans = 2  # " + value, "invalid"),
            ("b", "cot", 1, "cq", None, None, None, None, "unparsed"),  # None: the JSON value null
            ("b", "cot", 2, "", ["only"], "", "", None, "failed"),
        ]
        for k, (model, mode, sample, core, info, steps, final, program, verdict) in enumerate(variants):
            rationale_id = problem_id * 10 + k
            if info is SQL_NULL:
                sql_null_info.append(rationale_id)
            rationales.append(
                {
                    "id": rationale_id,
                    "problem_id": problem_id,
                    "job_id": None,
                    "provider": "sim",
                    "model": model,
                    "mode": mode,
                    "stage_mode": "single",
                    "prompt_version": f"v-{mode}",
                    "sample_index": sample,
                    "core_question": core,
                    "solving_info": None if info is SQL_NULL else info,
                    "solution_text": steps,
                    "final_answer_text": final,
                    "program": program,
                    "answer": value or None,
                    "verdict": verdict,
                    "verdict_kind": None if i % 3 else "kind",
                    "judged_by": "gold" if i % 2 else None,
                    "call_ids": [],
                }
            )
    with engine.begin() as conn:
        if conn.scalar(select(Corpus.id).where(Corpus.id == TRICKY_CORPUS)) is None:
            conn.execute(insert(Corpus), [{"id": TRICKY_CORPUS, "name": "tricky", "format": "gsm8k"}])
        conn.execute(insert(Problem), problems)
        conn.execute(insert(Rationale), rationales)
        # A None above is stored as the JSON value null; these hold SQL NULL instead.
        conn.execute(update(Rationale).where(Rationale.id.in_(sql_null_info)).values(solving_info=null()))
    engine.dispose()


def expected_rows(url: str) -> list[dict[str, Any]]:
    """The rationales as the ORM reads them, in the documented order, as export rows."""
    engine = create_engine(url)
    with Session(engine) as session:
        pairs = session.execute(
            select(Rationale, Problem).join(Problem, Problem.id == Rationale.problem_id)
        ).all()
    engine.dispose()
    rows = []
    for r, p in pairs:
        rows.append(
            {
                "rationale_id": r.id,
                "problem_id": p.id,
                "job_id": r.job_id,
                "corpus": "tricky" if p.corpus_id == TRICKY_CORPUS else "bench",
                "source_split": p.split,
                "source_id": p.source_id,
                "question": p.question,
                "gold_answer": p.gold_answer,
                "gold_kind": p.gold_kind,
                "gold_normalised": p.gold_normalised,
                "teacher": f"{r.provider}:{r.model}",
                "provider": r.provider,
                "model": r.model,
                "mode": r.mode,
                "stage_mode": r.stage_mode,
                "prompt_version": r.prompt_version,
                "sample_index": r.sample_index,
                "core_question": r.core_question,
                "solving_info": r.solving_info,
                "solution": r.program if r.mode == "pot" else r.solution_text,
                "final_answer_text": r.final_answer_text,
                "answer": r.answer,
                "verdict": r.verdict,
                "verdict_kind": r.verdict_kind,
                "judged_by": r.judged_by,
                "split": "train",
            }
        )
    key = ("provider", "model", "mode", "prompt_version", "sample_index", "rationale_id")
    return sorted(rows, key=lambda row: (row["problem_id"], *(row[k] for k in key)))


def test_every_value_arrives_exactly_and_in_code_point_order(
    pg_url: str, tmp_path: Path, datasets_dir: Path
) -> None:
    engine = get_engine(pg_url)
    with engine.begin() as conn:
        # A collation that sorts "alpha" before "Zeta": the export must not follow it.
        conn.execute(text('ALTER TABLE rationales ALTER COLUMN model TYPE varchar(256) COLLATE "und-x-icu"'))
    insert_tricky(pg_url, TRICKY)
    expected = expected_rows(pg_url)
    assert [r["model"] for r in expected[:6]] == ["Alpha", "Zeta", "alpha", "b", "b", "élan"]
    for format_name in ("parquet", "jsonl"):
        out = tmp_path / format_name
        export_snapshot(engine, ExportSpec(verdict="all", format=format_name), out, datasets_dir)
        assert read_rows(out, "rationales") == expected


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_copy_path_and_the_general_path_write_the_same_bytes(
    layout: str,
    pg_url: str,
    sqlite_url: str,
    tmp_path: Path,
    datasets_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for url in (pg_url, sqlite_url):
        insert_tricky(url, TRICKY)
    spec = ExportSpec(verdict="all", layout=layout, val_fraction=0.4)
    export_snapshot(get_engine(pg_url), spec, tmp_path / "copy", datasets_dir)
    export_snapshot(get_engine(sqlite_url), spec, tmp_path / "sqlite", datasets_dir)
    monkeypatch.setattr(query_module, "copy_applies", lambda conn: False)
    export_snapshot(get_engine(pg_url), spec, tmp_path / "rows", datasets_dir)
    copy = snapshot_bytes(tmp_path / "copy")
    assert copy == snapshot_bytes(tmp_path / "sqlite") == snapshot_bytes(tmp_path / "rows")


@pytest.mark.parametrize(
    "spec",
    [
        ExportSpec(verdict="all", row_group_size=1_000),
        ExportSpec(
            verdict="all",
            dedupe=True,
            max_per_problem=2,
            decontaminate=("gsm8k-test",),
            val_fraction=0.3,
            layout="cascade",
            row_group_size=1_000,
        ),
        ExportSpec(verdict="all", dedupe=True, val_fraction=0.3, layout="two-stage", row_group_size=1_000),
    ],
    ids=["defaults", "every-filter", "two-stage"],
)
def test_any_block_size_writes_the_same_bytes(
    spec: ExportSpec, pg_url: str, tmp_path: Path, datasets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(pg_url, 600)
    insert_tricky(pg_url, TRICKY)
    engine = get_engine(pg_url)
    outputs = []
    # 7 rows cuts problems (4 or 6 rows each) at every possible place; 1 holds one row a block.
    for block in (1, 7, query_module.STREAM_BATCH, 100_000):
        monkeypatch.setattr(query_module, "STREAM_BATCH", block)
        out = tmp_path / f"block-{block}"
        export_snapshot(engine, spec, out, datasets_dir)
        outputs.append(snapshot_bytes(out))
    assert all(o == outputs[0] for o in outputs[1:])


@pytest.fixture
def pg_kpdd(
    pg_url: str, kpdd_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> Callable[..., CliResult]:
    """`kpdd ARGS...` in-process against a fresh Postgres database."""
    kpdd_env(database_url=pg_url)

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def test_row_filters_bind_the_same_on_the_copy_path(
    pg_kpdd: Callable[..., CliResult],
    make_rationales: Callable[..., None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_rationales(pg_kpdd, 4, name="g")  # jobs 1 (sim:gold) and 2 (wrong answers)
    make_rationales(pg_kpdd, 3, name="h", offset=100, samples=1, wrong=False)  # job 3
    selections = {
        "jobs": (["--job", "1", "3"], 22),
        "corpus": (["--corpus", "h"], 6),
        "teacher": (["--teacher", "sim:gold+fault=wrong", "--verdict", "all"], 4),
        "mode": (["--mode", "pot", "--layout", "cascade"], 11),
    }
    for name, (flags, rows) in selections.items():
        assert pg_kpdd("export", "--out", tmp_path / f"{name}-copy", *flags).code == 0
        assert read_manifest(tmp_path / f"{name}-copy")["counts"]["rows"] == rows
    monkeypatch.setattr(query_module, "copy_applies", lambda conn: False)
    for name, (flags, _rows) in selections.items():
        assert pg_kpdd("export", "--out", tmp_path / f"{name}-rows", *flags).code == 0
        assert snapshot_bytes(tmp_path / f"{name}-copy") == snapshot_bytes(tmp_path / f"{name}-rows")
