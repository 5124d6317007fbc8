"""Consensus pseudo-gold: majority answer over teachers and samples, above a threshold."""

from __future__ import annotations

import pytest

from services.validation.consensus import (
    form_consensus,
    vote_key_for_answer,
    vote_key_for_response,
    vote_key_for_span,
)
from services.validation.matching import judge_cot, judge_program_answer


@pytest.mark.parametrize(
    ("response", "key"),
    [
        ("#### 18", "18"),
        ("The answer is $18.00.", "18"),
        ("\\boxed{\\frac{5}{2}}", "5/2"),
        ("The answer is 2.5", "5/2"),
        ("She arrives at 3:30 PM.\nThe answer is 3:30 pm", "3:30 p.m."),
        ("The answer is 15:30", "3:30 p.m."),
        ("The ratio is 2 : 3. The answer is 2:3", "2:3"),
        ("The answer is yes", "yes"),
        ("The answer is the Cooper wedding.", "cooper wedding"),
        ("The answer is 18 or 20.", None),
        ("\\boxed{18} and \\boxed{20}", None),
        ("I do not know.", None),
        ("Answer: John.\nHe ran 5 miles.", "john"),
        ("", None),
    ],
)
def test_vote_keys_are_canonical(response: str, key: str | None) -> None:
    assert vote_key_for_response(response) == key


def test_program_votes_use_the_same_keys() -> None:
    assert vote_key_for_answer(18) == vote_key_for_span("18.0") == "18"
    assert vote_key_for_answer(0.1 * 3) == "3/10"
    assert vote_key_for_answer({"type": "fraction", "value": "5/2", "truncated": False}) == "5/2"
    assert vote_key_for_answer(True) == "yes"
    assert vote_key_for_answer(None) is None
    assert vote_key_for_answer([36, 12]) == "36; 12"


def test_majority_above_threshold_is_accepted_with_its_agreement() -> None:
    consensus = form_consensus(["18", "18", "18", "20", None], min_agreement=0.6)
    assert consensus.accepted and consensus.pseudo_gold == "18"
    assert (consensus.votes, consensus.samples, consensus.agreement) == (3, 5, 0.6)
    assert consensus.tally == {"18": 3, "20": 1}


@pytest.mark.parametrize(
    ("keys", "kwargs", "reason"),
    [
        (["18", "18", "20", None], {"min_agreement": 0.6}, "below min_agreement"),
        (["18", "20"], {}, "tie"),
        (["18"], {"min_agreement": 0.5}, "fewer than min_votes"),
        ([None, None], {}, "no sample has a readable answer"),
        ([], {}, "no samples"),
    ],
)
def test_weak_votes_are_refused(keys: list[str | None], kwargs: dict[str, float], reason: str) -> None:
    consensus = form_consensus(keys, **kwargs)  # type: ignore[arg-type]
    assert not consensus.accepted and consensus.pseudo_gold is None
    assert consensus.reason is not None and reason in consensus.reason


def test_threshold_and_min_votes_are_configurable() -> None:
    keys = ["18", "18", "20", "21"]
    assert not form_consensus(keys, min_agreement=0.6).accepted
    assert form_consensus(keys, min_agreement=0.5).accepted
    assert form_consensus(["7"], min_agreement=1.0, min_votes=1).accepted
    with pytest.raises(ValueError):
        form_consensus(keys, min_agreement=0.0)
    with pytest.raises(ValueError):
        form_consensus(keys, min_votes=0)


def test_verdicts_record_the_consensus() -> None:
    responses = ["The answer is 18.", "\\boxed{18}", "#### 18.0", "The answer is 20."]
    consensus = form_consensus([vote_key_for_response(r) for r in responses], min_agreement=0.7)
    verdicts = [judge_cot(r, consensus) for r in responses]
    assert [v.kind for v in verdicts] == ["match", "match", "match", "mismatch"]
    for verdict in verdicts:
        assert verdict.method == "consensus"
        assert verdict.details["agreement"] == 0.75
        assert (verdict.details["votes"], verdict.details["samples"]) == (3, 4)
        assert verdict.details["pseudo_gold"] == "18"
        assert verdict.details["compared_by"] == "exact"
    program = judge_program_answer(18.0, consensus)
    assert program.match and program.method == "consensus"


def test_no_consensus_verdict_still_shows_the_answer() -> None:
    consensus = form_consensus(["18", "20"])
    verdict = judge_cot("The answer is 18.", consensus)
    assert (verdict.kind, verdict.match, verdict.method) == ("no_consensus", False, "consensus")
    assert verdict.extracted == "18" and "tie" in verdict.details["reason"]
    assert verdict.details["samples"] == 2


def test_text_and_clock_pseudo_golds_read_back() -> None:
    spans = ["3:30 pm", "15:30", "3:30 p.m."]
    consensus = form_consensus([vote_key_for_span(s) for s in spans], min_agreement=1.0)
    assert consensus.pseudo_gold == "3:30 p.m."
    assert all(judge_cot(f"The answer is {s}.", consensus).match for s in spans)
    names = form_consensus([vote_key_for_span(s) for s in ["John", "john.", "Mary"]])
    assert names.pseudo_gold == "john"
    assert judge_cot("The answer is John, because he ran.", names).match
