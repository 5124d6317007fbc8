"""`kpdd probe`'s summary counts the verdicts read through the low-confidence fallback of answer
matching, with the same function as `kpdd validate` (`services.validation.verdict`)."""

from __future__ import annotations

import json
from collections.abc import Callable

from services.cli.probe_cmd import _summary
from services.kpdd.records import KeyPoints
from services.teachers.judging import ProbeVerdict
from services.teachers.rationale import RationaleOutcome
from services.validation.matching import judge_cot
from services.validation.verdict import HIGH, LOW, count_read_by_fallback, read_by_fallback
from tests.conftest import CliResult
from tests.services.teachers.clients_support import GSM8K_TEST


def test_the_count_is_of_low_confidence_verdicts_of_the_matcher() -> None:
    marked = judge_cot("So she has 5 + 7 = 12 apples.\nThe answer is: 12", "12")
    fallback = judge_cot("So she has 5 + 7 = 12 apples in all.", "12")
    assert marked.match and fallback.match
    assert not read_by_fallback(marked) and read_by_fallback(fallback)
    assert count_read_by_fallback([marked, fallback, fallback]) == 2


def test_probe_summary_counts_fallback_verdicts() -> None:
    outcome = RationaleOutcome("sim:gold", "v", KeyPoints("q?", ["f"], "s", "12"))
    verdicts = [
        ProbeVerdict(True, True, "match", "12", confidence=HIGH),
        ProbeVerdict(True, True, "match", "12", confidence=LOW),
        ProbeVerdict(True, False, "mismatch", "13", confidence=LOW),
    ]
    summary = _summary([outcome] * 3, verdicts, 0.1)
    assert summary["fallback"] == 2 and (summary["right"], summary["wrong"]) == (2, 1)


def test_probe_reports_the_fallback_count(kpdd: Callable[..., CliResult]) -> None:
    assert kpdd("ingest", "gsm8k", GSM8K_TEST, "--corpus", "gsm8k").code == 0
    human = kpdd("probe", "--teacher", "sim:gold", "--corpus", "gsm8k", "--limit", "2")
    assert human.code == 0, human.err
    # The simulator writes a marked answer line: nothing is read through the fallback.
    assert "problems 2: right 2, wrong 0" in human.out
    assert "0 read through the low-confidence last-number fallback" in human.out
    document = json.loads(
        kpdd("probe", "--teacher", "sim:gold", "--corpus", "gsm8k", "--limit", "2", "--json").out
    )
    assert document["summary"]["fallback"] == 0
    assert {p["verdict"]["confidence"] for p in document["problems"]} == {"high"}
