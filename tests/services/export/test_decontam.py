"""Decontamination against the real evaluation sets in ../shared/datasets (GSM8K test, SVAMP,
ASDiv, MultiArith) and against ingested corpora."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine

from services.export.decontam import Decontaminator, question_ngrams, resolve_eval_sets
from tests.conftest import CliResult
from tests.services.export.conftest import gsm8k_lines, read_manifest, read_rows, write_lines

ALL_SETS = ("gsm8k-test", "svamp", "asdiv", "multiarith")
TEST_LINES = [5, 100, 1000]  # GSM8K test items planted in a training corpus
TRAIN_LINES = [0, 1, 2, 20]  # line 20 is a templated copy of GSM8K test item 632 (overlap 0.36)


def _eval_sets(datasets_dir: Path, sqlite_url: str) -> Decontaminator:
    engine = create_engine(sqlite_url)
    with engine.connect() as conn:
        sets = resolve_eval_sets(ALL_SETS, datasets_dir, conn)
    engine.dispose()
    return Decontaminator(sets, 10, 0.2)


def test_the_real_evaluation_sets_load_and_match_their_own_items(datasets_dir: Path, sqlite_url: str) -> None:
    checker = _eval_sets(datasets_dir, sqlite_url)
    assert [(s.name, len(s.items)) for s in checker.sets] == [
        ("gsm8k-test", 1319),
        ("svamp", 1000),
        ("asdiv", 2305),
        ("multiarith", 600),
    ]
    assert (
        checker.sets[0].sha256 == hashlib.sha256((datasets_dir / "gsm8k/test.jsonl").read_bytes()).hexdigest()
    )
    test_question = json.loads(gsm8k_lines(datasets_dir, "test", [7])[0])["question"]
    match = checker.check(test_question)
    assert match is not None and (match.dataset, match.eval_id, match.overlap) == ("gsm8k-test", "7", 1.0)
    asdiv = dict(checker.sets[2].items)["nluds-0404"]
    match = checker.check("  " + asdiv.upper() + "  ")  # case and spacing do not hide a copy
    assert match is not None and match.dataset == "asdiv" and match.overlap == 1.0
    multiarith = checker.sets[3].items[17]
    match = checker.check(multiarith[1])
    assert match is not None and match.dataset in ("multiarith", "svamp", "asdiv") and match.overlap == 1.0
    # An unrelated question matches nothing; a short one is a single gram.
    assert checker.check("What is the airspeed velocity of an unladen swallow, in furlongs?") is None
    assert question_ngrams("Two apples?", 10) == {"two apples"}


def test_planted_gsm8k_test_questions_are_dropped_with_their_eval_ids(
    sqlite_kpdd: Callable[..., CliResult], datasets_dir: Path, tmp_path: Path
) -> None:
    kpdd = sqlite_kpdd
    lines = gsm8k_lines(datasets_dir, "train", TRAIN_LINES) + gsm8k_lines(datasets_dir, "test", TEST_LINES)
    assert kpdd("ingest", "gsm8k", write_lines(tmp_path / "mix.jsonl", lines), "--corpus", "mix").code == 0
    svamp = json.loads((datasets_dir / "svamp" / "SVAMP.json").read_text(encoding="utf-8"))[:2]
    (tmp_path / "sv.json").write_text(json.dumps(svamp), encoding="utf-8")
    assert kpdd("ingest", "svamp", tmp_path / "sv.json", "--corpus", "sv", "--split", "train").code == 0
    for corpus in ("mix", "sv"):
        assert (
            kpdd("generate", "--corpus", corpus, "--teacher", "sim:gold", "--mode", "cot", "--json").code == 0
        )

    out = tmp_path / "clean"
    result = kpdd("export", "--out", out, "--decontaminate", *ALL_SETS, "--json")
    assert result.code == 0, result.err
    report = read_manifest(out)["decontamination"]
    assert report["ngram"] == 10 and report["threshold"] == 0.2
    assert [(d["name"], d["items"]) for d in report["datasets"]] == [
        ("asdiv", 2305),
        ("gsm8k-test", 1319),
        ("multiarith", 600),
        ("svamp", 1000),
    ]
    dropped = {(d["corpus"], d["source_id"]): d for d in report["dropped"]}
    # The planted test items are lines 4, 5, 6 of the mix file (0-based source ids).
    for position, test_line in enumerate(TEST_LINES, start=len(TRAIN_LINES)):
        entry = dropped[("mix", str(position))]
        assert (entry["dataset"], entry["eval_id"], entry["overlap"]) == ("gsm8k-test", str(test_line), 1.0)
    # GSM8K train line 20 shares a template with GSM8K test item 632 and ASDiv nluds-0664, with
    # the same overlap: the tie goes to the first set by name.
    templated = dropped[("mix", "3")]
    assert (templated["dataset"], templated["eval_id"], templated["matches"]) == ("asdiv", "nluds-0664", 2)
    assert 0.2 <= templated["overlap"] < 0.5
    assert {entry["eval_id"] for key, entry in dropped.items() if key[0] == "sv"} == {"chal-1", "chal-2"}
    assert all(entry["dataset"] == "svamp" for key, entry in dropped.items() if key[0] == "sv")
    assert len(dropped) == 6 and report["dropped_problems"] == 6 and report["dropped_rationales"] == 6
    kept = read_rows(out, "rationales")
    assert sorted(r["source_id"] for r in kept) == ["0", "1", "2"]
    assert read_manifest(out)["filters"]["decontaminated"] == 6

    # A higher threshold keeps the templated copy and still drops the verbatim ones.
    loose = tmp_path / "loose"
    assert kpdd("export", "--out", loose, "--corpus", "mix", "--decontaminate", "gsm8k-test",
                "--decontam-threshold", "0.5").code == 0  # fmt: skip
    loose_dropped = read_manifest(loose)["decontamination"]["dropped"]
    assert sorted(d["eval_id"] for d in loose_dropped) == sorted(str(i) for i in TEST_LINES)


def test_an_ingested_corpus_can_be_the_evaluation_set(
    sqlite_kpdd: Callable[..., CliResult], datasets_dir: Path, tmp_path: Path
) -> None:
    kpdd = sqlite_kpdd
    test_path = write_lines(tmp_path / "test.jsonl", gsm8k_lines(datasets_dir, "test", [3, 4]))
    assert kpdd("ingest", "gsm8k", test_path, "--corpus", "held", "--split", "test").code == 0
    lines = gsm8k_lines(datasets_dir, "train", [0, 1]) + gsm8k_lines(datasets_dir, "test", [4])
    assert kpdd("ingest", "gsm8k", write_lines(tmp_path / "t.jsonl", lines), "--corpus", "t").code == 0
    assert kpdd("generate", "--corpus", "t", "--teacher", "sim:gold", "--mode", "pot", "--json").code == 0
    for name in ("held/test", "db:held", "held"):
        out = tmp_path / name.replace("/", "_").replace(":", "_")
        result = kpdd("export", "--out", out, "--corpus", "t", "--decontaminate", name)
        assert result.code == 0, result.err
        report = read_manifest(out)["decontamination"]
        assert [(d["corpus"], d["source_id"], d["eval_id"]) for d in report["dropped"]] == [
            ("t", "2", "test/1")
        ]
        assert report["datasets"][0]["items"] == 2 and report["datasets"][0]["source"].startswith(
            "corpus held"
        )
