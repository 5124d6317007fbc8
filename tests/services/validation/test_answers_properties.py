"""Property tests: a number written in any accepted way matches itself, and nothing crashes."""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from services.validation.arithmetic import evaluate
from services.validation.consensus import form_consensus
from services.validation.matching import judge_cot, judge_program_answer
from services.validation.reading import read_single_number
from services.validation.verdict import VERDICT_KINDS

WRAPPERS = [
    "#### {}",
    "So she pays $\\boxed{{{}}}$ in total.",
    "The answer is {}.",
    "Final Answer: {}",
    "Step 1: 3 + 4 = 7.\nStep 2: 7 * 2 = 14.\n**Answer:** {}",
    "We add 2 and 5.\n{}",
]


def _thousands(n: int) -> str:
    return f"{n:,}"


def _integer_forms(n: int) -> list[str]:
    sign = "-" if n < 0 else ""
    a = abs(n)
    forms = [
        str(n),
        _thousands(n),
        f"{n}.0",
        f"{_thousands(n)}.00",
        f"{sign}${_thousands(a)}",
        f"{n} apples",
        f"\\text{{{n}}} dollars",
        _thousands(n).replace(",", "{,}"),
        str(n).replace("-", "\u2212"),
        f"{sign}00{a}",
        f"{n}\\%",
    ]
    mantissa, exponent = a, 0
    while mantissa and mantissa % 10 == 0:
        mantissa //= 10
        exponent += 1
    if exponent:
        forms.append(f"{sign}{mantissa}e{exponent}")
        forms.append(f"{sign}{mantissa} \\times 10^{{{exponent}}}")
    return forms


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(min_value=-(10**12), max_value=10**12),
    form=st.integers(min_value=0, max_value=20),
    wrapper=st.sampled_from(WRAPPERS),
    gold_form=st.sampled_from(["plain", "thousands", "point-zero"]),
)
def test_any_accepted_integer_format_matches(n: int, form: int, wrapper: str, gold_form: str) -> None:
    forms = _integer_forms(n)
    written = forms[form % len(forms)]
    gold = {"plain": str(n), "thousands": _thousands(n), "point-zero": f"{n}.0"}[gold_form]
    verdict = judge_cot(wrapper.format(written), gold)
    assert verdict.match, (written, gold, verdict.to_json())


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(min_value=-(10**9), max_value=10**9),
    delta=st.integers(min_value=-1000, max_value=1000).filter(lambda d: d != 0),
    wrapper=st.sampled_from(WRAPPERS),
)
def test_a_different_integer_never_matches(n: int, delta: int, wrapper: str) -> None:
    verdict = judge_cot(wrapper.format(_thousands(n + delta)), str(n))
    assert not verdict.match
    assert verdict.kind == "mismatch", verdict.to_json()


@settings(max_examples=150, deadline=None)
@given(
    mantissa=st.integers(min_value=-(10**8), max_value=10**8),
    places=st.integers(min_value=1, max_value=4),
    form=st.sampled_from(["same", "extra-zero", "fraction", "latex-fraction", "scientific"]),
    wrapper=st.sampled_from(WRAPPERS),
)
def test_any_accepted_decimal_format_matches(mantissa: int, places: int, form: str, wrapper: str) -> None:
    value = Fraction(mantissa, 10**places)
    gold = f"{Decimal(mantissa).scaleb(-places):f}"
    sign = "-" if value < 0 else ""
    written = {
        "same": gold,
        "extra-zero": gold + "0",
        "fraction": f"{value.numerator}/{value.denominator}",
        "latex-fraction": f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}",
        "scientific": f"{mantissa}e-{places}",
    }[form]
    verdict = judge_cot(wrapper.format(written), gold)
    assert verdict.match, (written, gold, verdict.to_json())


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(min_value=-(10**6), max_value=10**6),
    places=st.integers(min_value=1, max_value=3),
)
def test_decimal_gold_rejects_answers_outside_its_precision(n: int, places: int) -> None:
    gold_value = Fraction(n, 10**places)
    gold = f"{Decimal(n).scaleb(-places):f}"
    off = gold_value + Fraction(6, 10 ** (places + 1))  # 0.6 of a unit in the last place away
    said = f"{Decimal(off.numerator) / Decimal(off.denominator):f}"
    assert not judge_cot(f"#### {said}", gold).match


@settings(max_examples=150, deadline=None)
@given(
    n=st.one_of(
        st.integers(min_value=-(10**15), max_value=10**15),
        st.fractions(max_denominator=10**6),
    ),
)
def test_program_answers_match_their_own_value(n: int | Fraction) -> None:
    gold = str(n)  # `5/2` for a Fraction
    assert judge_program_answer(n, gold).match
    assert judge_program_answer({"type": "text", "value": str(n), "truncated": False}, gold).match


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(max_size=400),
    gold=st.sampled_from(["18", "2.5", "2:3", "3:30 p.m.", "Yes", "John", "36; 12", "6th", "", "7/9"]),
)
def test_any_text_gets_a_verdict(text: str, gold: str) -> None:
    verdict = judge_cot(text, gold)
    assert verdict.kind in VERDICT_KINDS
    json.dumps(verdict.to_json())


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="0123456789+-*/^()., x×÷%$e", max_size=200))
def test_numbers_and_arithmetic_never_raise(text: str) -> None:
    read_single_number(text)
    value = evaluate(text)
    assert value is None or isinstance(value, Fraction)


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.one_of(st.none(), st.sampled_from(["18", "20", "7/2", "yes"])), max_size=12),
    min_agreement=st.floats(min_value=0.01, max_value=1.0),
    min_votes=st.integers(min_value=1, max_value=4),
)
def test_consensus_accepts_only_a_clear_majority(
    keys: list[str | None], min_agreement: float, min_votes: int
) -> None:
    consensus = form_consensus(keys, min_agreement=min_agreement, min_votes=min_votes)
    assert consensus.samples == len(keys)
    if consensus.accepted:
        assert consensus.pseudo_gold is not None
        assert consensus.votes == keys.count(consensus.pseudo_gold)
        assert consensus.agreement >= min_agreement
        assert consensus.votes >= min_votes
        others = [keys.count(k) for k in set(keys) - {None, consensus.pseudo_gold}]
        assert all(count < consensus.votes for count in others)
    else:
        assert consensus.pseudo_gold is None
        assert consensus.reason
