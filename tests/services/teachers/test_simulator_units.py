"""The simulator's parts without HTTP: rationales, fault draws, limits, wire bodies, the bank."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine

from services.errors import BadInputError, ConfigError
from services.kpdd.arithmetic import evaluate_program
from services.kpdd.parsing import parse_response, parse_stage
from services.kpdd.records import KeyPoints, ParseFailure, Solution
from services.teachers.simulator import CorpusSource, FaultRates, ProblemBank, decide_fault, question_key
from services.teachers.simulator.answers import answer_text
from services.teachers.simulator.faults import draw, parse_forced, split_model
from services.teachers.simulator.ratelimit import RateLimiter
from services.teachers.simulator.rationale import GoldProblem, derive_rationale
from services.teachers.simulator.stats import Stats
from services.teachers.simulator.wire import WireError, error_body, parse_anthropic, parse_openai
from services.validation.numbers import normalise_gold, parse_number
from tests.services.teachers.simulator_helpers import DATASETS, gsm8k_bank

# --- rationales -------------------------------------------------------------------------------------


def test_every_gsm8k_train_rationale_reaches_the_gold() -> None:
    """All 7473 items: the PoT program's exact value and the CoT answer are the gold, and the
    'wrong' variants are not. About 4% need the fallback program."""
    bank = gsm8k_bank()
    assert len(bank) == 7473
    for problem in bank._problems.values():
        rationale = derive_rationale(problem)
        gold = parse_number(problem.gold_answer or "")
        assert evaluate_program(rationale.program) == gold, problem.question
        assert parse_number(rationale.answer) == gold
        assert evaluate_program(rationale.wrong_program) != gold
        assert parse_number(rationale.wrong_answer) != gold


@pytest.mark.parametrize(
    ("fmt", "path", "min_with_equation"),
    [
        ("svamp", "svamp/SVAMP.json", 990),
        ("multiarith", "multiarith/MultiArith.json", 570),
        ("asdiv", "asdiv/ASDiv.xml", 1500),
    ],
)
def test_other_corpora_rationales(fmt: str, path: str, min_with_equation: int) -> None:
    bank = ProblemBank()
    bank.load_corpus(CorpusSource(fmt, DATASETS / path))
    with_equation = 0
    for problem in bank._problems.values():
        rationale = derive_rationale(problem)
        value = evaluate_program(rationale.program)
        gold = parse_number(rationale.answer)
        if gold is not None:
            assert value == gold, (problem.question, rationale.program)
            with_equation += rationale.program.strip() != f"ans = {rationale.answer}"
        text = answer_text(rationale, "cot", "all", None).text
        parsed = parse_response(text, "stop", "cot")
        assert isinstance(parsed, KeyPoints)
        assert normalise_gold(parsed.final_answer_text) == normalise_gold(rationale.answer)
    assert with_equation >= min_with_equation


def test_text_golds_and_missing_golds() -> None:
    ratio = derive_rationale(GoldProblem("What is the ratio of cats to dogs?", "2:3 (cats:dogs)"))
    assert ratio.answer == "2:3" and ratio.program == "ans = '2:3'\n"
    assert ratio.wrong_answer == "0"
    fraction = derive_rationale(GoldProblem("Split 5 pies between 2. How much each?", "5/2"))
    assert fraction.answer == "2.5" and evaluate_program(fraction.program) == Fraction(5, 2)
    third = derive_rationale(GoldProblem("A third? How much?", "1/3"))
    assert third.answer == "1/3"
    # Without a gold there is nothing to answer from: no rationale (the server refuses it).
    assert derive_rationale(GoldProblem("How many legs do 3 ducks have?", None)) is None


def test_core_question_and_information_split() -> None:
    r = derive_rationale(GoldProblem("Tom has 3 apples. He eats one! How many are left? Answer fast.", "2"))
    assert r.core_question == "How many are left?"
    assert r.solving_info == ["Tom has 3 apples.", "He eats one!", "Answer fast."]


@pytest.mark.parametrize("mode", ["cot", "pot"])
@pytest.mark.parametrize("stage", ["all", "core_question", "solving_info", "solution"])
def test_answer_texts_parse_as_intended_for_each_fault(mode: str, stage: str) -> None:
    rationale = derive_rationale(next(iter(gsm8k_bank()._problems.values())))
    good = parse_stage(answer_text(rationale, mode, stage, None).text, "stop", mode, stage)  # type: ignore[arg-type]
    assert not isinstance(good, ParseFailure)
    malformed = parse_stage(answer_text(rationale, mode, stage, "malformed").text, "stop", mode, stage)  # type: ignore[arg-type]
    assert isinstance(malformed, ParseFailure) and malformed.kind == "malformed"
    cut = answer_text(rationale, mode, stage, "truncate")  # type: ignore[arg-type]
    assert cut.finish == "length"
    assert len(cut.text) < len(answer_text(rationale, mode, stage, None).text)  # type: ignore[arg-type]
    assert answer_text(rationale, mode, stage, "refusal").finish == "refusal"  # type: ignore[arg-type]
    wrong = parse_stage(answer_text(rationale, mode, stage, "wrong").text, "stop", mode, stage)  # type: ignore[arg-type]
    if stage in ("all", "solution"):
        assert isinstance(wrong, KeyPoints | Solution)
        value = (
            evaluate_program(wrong.program) if wrong.program else parse_number(wrong.final_answer_text or "")
        )
        assert value == 73  # Natalia: gold 72


# --- faults -----------------------------------------------------------------------------------------


def test_decide_fault_is_pure_and_follows_the_rates() -> None:
    rates = FaultRates(server_error=0.1, hang=0.05, wrong=0.25)
    fp = b"x" * 16
    assert [decide_fault(3, fp, a, rates) for a in range(50)] == [
        decide_fault(3, fp, a, rates) for a in range(50)
    ]
    draws = [decide_fault(3, i.to_bytes(16, "little"), 0, rates) for i in range(20000)]
    assert abs(draws.count("500") / 20000 - 0.10) < 0.01
    assert abs(draws.count("hang") / 20000 - 0.05) < 0.01
    assert abs(draws.count("wrong") / 20000 - 0.25) < 0.015
    assert draws.count(None) + draws.count("500") + draws.count("hang") + draws.count("wrong") == 20000
    assert 0.0 <= draw(0, fp, 0) < 1.0 and draw(0, fp, 0) != draw(1, fp, 0) != draw(0, fp, 1)
    assert decide_fault(3, fp, 0, FaultRates()) is None


def test_fault_rates_are_checked() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultRates(wrong=1.5)
    with pytest.raises(ValueError, match="more than 1"):
        FaultRates(wrong=0.6, malformed=0.6)


def test_forced_fault_specs() -> None:
    forced = parse_forced("500*2")
    assert forced.kind == "500" and forced.applies(0) and forced.applies(1) and not forced.applies(2)
    assert parse_forced(" HANG ").kind == "hang" and parse_forced("hang").applies(99)
    assert parse_forced("none").kind is None
    with pytest.raises(ValueError, match="unknown simulated fault"):
        parse_forced("boom")
    assert split_model("gold+fault=truncate*3") == ("gold", "truncate*3")
    assert split_model("gpt-4o") == ("gpt-4o", None)


# --- rate limiter -------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_request_bucket_refills_continuously() -> None:
    clock = _Clock()
    limiter = RateLimiter(rpm=60, tpm=None, clock=clock)
    assert all(limiter.take("m", 10).allowed for _ in range(60))
    refused = limiter.take("m", 10)
    assert not refused.allowed and refused.metric == "requests"
    assert refused.retry_after_s == pytest.approx(1.0)
    assert limiter.take("other", 10).allowed  # per model
    clock.now += 0.5
    assert limiter.take("m", 10).retry_after_s == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.take("m", 10).allowed


def test_token_bucket_takes_both_or_neither() -> None:
    clock = _Clock()
    limiter = RateLimiter(rpm=100, tpm=1000, clock=clock)
    assert limiter.take("m", 600).allowed
    refused = limiter.take("m", 600)
    assert not refused.allowed and refused.metric == "tokens"
    assert refused.retry_after_s == pytest.approx(200 * 60 / 1000)
    assert refused.remaining_requests == 99  # the refused request took nothing
    assert limiter.take("m", 400).allowed
    assert limiter.take("m", 2000).too_large
    assert RateLimiter(None, None).take("m", 10**9).allowed


# --- wire ----------------------------------------------------------------------------------------------


def test_openai_request_parsing() -> None:
    body = {
        "model": "gold",
        "messages": [
            {"role": "developer", "content": "sys"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Problem:"}, {"type": "text", "text": "Q?"}],
            },
            {"role": "assistant", "content": None},
            {"role": "user", "content": "last"},
        ],
        "max_completion_tokens": 50,
        "n": 2,
    }
    chat = parse_openai(orjson.dumps(body))
    assert (chat.system, chat.last_user, chat.max_tokens, chat.n) == ("sys", "last", 50, 2)
    for bad, message in (
        (b"[1]", "JSON object"),
        (b"{", "not valid JSON"),
        (orjson.dumps({"model": "g"}), "messages"),
        (orjson.dumps({"model": "g", "messages": [{"role": "user", "content": "x"}], "n": 99}), "at most"),
        (orjson.dumps({"model": "g", "messages": [{"role": "wizard", "content": "x"}]}), "unknown role"),
        (
            orjson.dumps({"model": "g", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            "positive",
        ),
    ):
        with pytest.raises(WireError, match=message):
            parse_openai(bad)


def test_anthropic_request_parsing() -> None:
    body = {
        "model": "claude",
        "system": [{"type": "text", "text": "sys"}],
        "messages": [{"role": "user", "content": "Problem:\nQ?"}],
        "max_tokens": 100,
    }
    chat = parse_anthropic(orjson.dumps(body))
    assert (chat.system, chat.last_user, chat.max_tokens, chat.n) == ("sys", "Problem:\nQ?", 100, 1)
    with pytest.raises(WireError, match="max_tokens"):
        parse_anthropic(orjson.dumps({k: v for k, v in body.items() if k != "max_tokens"}))


def test_error_bodies() -> None:
    openai_err = orjson.loads(error_body("openai", 429, "slow down", "req_1", limit="tokens"))
    assert openai_err == {
        "error": {"message": "slow down", "type": "tokens", "param": None, "code": "rate_limit_exceeded"}
    }
    anthropic_err = orjson.loads(error_body("anthropic", 500, "oops", "req_2"))
    assert anthropic_err == {
        "type": "error",
        "error": {"type": "api_error", "message": "oops"},
        "request_id": "req_2",
    }


# --- bank and stats --------------------------------------------------------------------------------------


def test_question_key_ignores_whitespace_runs() -> None:
    assert question_key("How  many\n apples?") == question_key(" How many apples? ")
    assert question_key("How many apples?") != question_key("How many pears?")


def test_bank_keeps_the_first_and_counts_conflicts() -> None:
    bank = ProblemBank()
    assert bank.add(GoldProblem("Q  one?", "1"))
    assert not bank.add(GoldProblem("Q one?", "2"))
    assert not bank.add(GoldProblem("Q one?", "1"))
    assert len(bank) == 1 and bank.conflicts == 1
    known = bank.rationale_for("Q one?")
    assert known is not None and known.answer == "1"
    assert bank.rationale_for("Unknown?") is None and not bank.knows("Unknown?")


def test_corpus_spec_parsing() -> None:
    source = CorpusSource.parse("GSM8K:/data/train.jsonl")
    assert source == CorpusSource("gsm8k", Path("/data/train.jsonl"))
    with pytest.raises(BadInputError, match="FORMAT:PATH"):
        CorpusSource.parse("train.jsonl")
    with pytest.raises(BadInputError, match="unknown corpus format"):
        ProblemBank().load_corpus(CorpusSource("nope", DATASETS / "gsm8k" / "train.jsonl"))


def test_bank_from_the_database(tmp_path: Path) -> None:
    from db.engine import session_scope
    from db.models import Base, Corpus, Problem

    url = f"sqlite:///{tmp_path / 'kpdd.sqlite3'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with session_scope(engine) as session:
        corpus = Corpus(name="mini", format="jsonl")
        session.add(corpus)
        session.flush()
        session.add(
            Problem(
                corpus_id=corpus.id,
                split="train",
                source_id="0",
                question="Ann has 2 pens and buys 3.  How many pens does she have?",
                gold_answer="5",
                gold_kind="number",
                gold_normalised="5",
                worked_solution="She has 2+3=<<2+3=5>>5 pens.\n#### 5",
                content_hash="x" * 64,
            )
        )
    engine.dispose()
    bank = ProblemBank()
    assert bank.load_database(url) == 1
    rationale = bank.rationale_for("Ann has 2 pens and buys 3. How many pens does she have?")
    assert rationale is not None and rationale.answer == "5" and evaluate_program(rationale.program) == 5


def test_bank_from_a_database_without_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kpdd db upgrade"):
        ProblemBank().load_database(f"sqlite:///{tmp_path / 'empty.sqlite3'}")


def test_stats_rows_sum_over_workers() -> None:
    storage = [0] * 200
    a = Stats(storage, worker=0, workers=2)
    b = Stats(storage, worker=1, workers=2)
    a.add("requests")
    b.add("requests", 2)
    b.add("fault_500")
    snap = a.snapshot()
    assert snap["requests"] == 3 and snap["fault_500"] == 1 and snap["workers"] == 2
    a.reset()
    assert b.snapshot()["requests"] == 0
