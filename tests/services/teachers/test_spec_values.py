"""Teacher specs refuse values the database could not store, in one line, before any call:
control characters (NUL above all) anywhere in a spec or an option, and model names longer
than the `model` columns."""

from __future__ import annotations

import pytest

from services.errors import BadInputError
from services.teachers.spec import MAX_MODEL_CHARS, parse_option_pairs, parse_spec

SECRET = "sk-do-not-echo-0123456789"


@pytest.mark.parametrize(
    ("text", "code_point"),
    [
        ("openai:gpt-4o-mini\x00", "U+0000"),
        ("sim:gold,temperature=0.2\x00", "U+0000"),
        ("sim:gold@http://127.0.0.1:9/v1\n,seed=1", "U+000A"),
        ("openai-compatible:m@http://host:8000/v1\t", None),  # trailing whitespace is trimmed
        (f"openai:gpt-4o-mini,api_key_env=MY_KEY\x1b{SECRET}", "U+001B"),
    ],
)
def test_control_characters_are_refused_in_one_line_without_echoing_the_spec(
    text: str, code_point: str | None
) -> None:
    if code_point is None:
        assert parse_spec(text).base_url == "http://host:8000/v1"
        return
    with pytest.raises(BadInputError) as caught:
        parse_spec(text)
    message = str(caught.value)
    assert code_point in message and "\n" not in message and "\x00" not in message
    assert SECRET not in message


def test_control_characters_are_refused_in_separate_options() -> None:
    with pytest.raises(BadInputError, match=r"--teacher-option #2: holds the control character U\+0000"):
        parse_option_pairs(["seed=1", "temperature=0.2\x00"])
    with pytest.raises(BadInputError, match=r"teacher option seed='1\\x00' is invalid"):
        parse_spec("sim:gold", {"seed": "1\x00"})  # a typed option refuses it as a value


def test_a_model_name_longer_than_its_column_is_refused() -> None:
    assert parse_spec("openai:" + "m" * MAX_MODEL_CHARS).model == "m" * MAX_MODEL_CHARS
    with pytest.raises(BadInputError) as caught:
        parse_spec("openai:" + "m" * (MAX_MODEL_CHARS + 1))
    message = str(caught.value)
    assert f"{MAX_MODEL_CHARS + 1} characters long; at most {MAX_MODEL_CHARS}" in message
    assert len(message) < 300 and "\n" not in message
