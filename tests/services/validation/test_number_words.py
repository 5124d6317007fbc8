"""Numbers written in words read into digits, and the quantities left unread."""

from __future__ import annotations

import pytest

from services.validation.number_words import spell_out_digits
from services.validation.reading import ReadFailure, ReadNumber, clean_answer_text, read_single_number


@pytest.mark.parametrize(
    ("text", "spelled"),
    [
        ("eighteen", "18"),
        ("twenty-one", "21"),
        ("one hundred twenty-five", "125"),
        ("one hundred and five sheep", "105 sheep"),
        ("two thousand five hundred dollars", "2500 dollars"),
        ("seven hundred thousand", "700000"),
        ("twenty-five hundred", "2500"),
        ("a million", "1000000"),
        ("three million", "3000000"),
        ("two point five liters", "2.5 liters"),
        ("three and a half hours", "7/2 hours"),
        ("three quarters of the pie", "3/4 of the pie"),
        ("twenty-one halves", "21/2"),
        ("a third", "1/3"),
        ("negative five", "-5"),
        ("2 and a half hours", "5/2 hours"),
        ("let us think step by step", "let us think step by step"),
    ],
)
def test_spelled_out(text: str, spelled: str) -> None:
    assert spell_out_digits(text) == (spelled, False)


@pytest.mark.parametrize("text", ["several hundred apples", "a dozen and a half", "two dozen", "thousands"])
def test_quantities_left_unread(text: str) -> None:
    assert spell_out_digits(text)[1] is True


def test_mixed_only_leaves_words() -> None:
    assert spell_out_digits("2 and a half, one each", mixed_only=True) == ("5/2, one each", False)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2½", "5/2"),
        ("2 ½", "5/2"),
        ("½", "1/2"),
        ("3¼ pounds", "13/4"),
        ("1.5 million", "1500000"),
        ("$12 thousand", "12000"),
        ("half of 36, which is 18", "18"),
        ("3/4 of 24, which is 18", "18"),
        ("18 apples, which is 3 more than Tom", "18"),
        ("eighteen dollars", "18"),
    ],
)
def test_read_single_number(text: str, value: str) -> None:
    number = read_single_number(text)
    assert isinstance(number, ReadNumber), number
    assert f"{number.value.numerator}/{number.value.denominator}".removesuffix("/1") == value


def test_vulgar_fraction_is_not_twenty_one_halves() -> None:
    assert clean_answer_text("2½") == "2 1/2"


@pytest.mark.parametrize(
    ("text", "empty"),
    [
        ("several hundred apples", False),  # a number in words we do not read: no fallback
        ("a dozen and a half", False),
        ("let's do it in two steps", True),  # working, not an answer: the ladder goes on
        ("One way to solve this is to add", True),
        ("18 hundred-dollar bills", None),  # read as 18: "hundred-" is not a scale word
    ],
)
def test_words_not_read(text: str, empty: bool | None) -> None:
    number = read_single_number(text)
    if empty is None:
        assert isinstance(number, ReadNumber) and number.value == 18
    else:
        assert isinstance(number, ReadFailure) and number.empty is empty
