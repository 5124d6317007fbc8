"""Teacher specs and options: parsed, checked before any call, errors that name the culprit."""

from __future__ import annotations

import pytest

from services.errors import BadInputError
from services.teachers.spec import AnthropicOptions, OpenAIOptions, parse_option_pairs, parse_spec


def test_the_architecture_examples_parse() -> None:
    spec = parse_spec("openai:gpt-4o-mini")
    assert (spec.provider, spec.model, spec.base_url) == ("openai", "gpt-4o-mini", None)
    assert isinstance(spec.options, OpenAIOptions)
    assert spec.options.max_tokens == 1024

    spec = parse_spec("anthropic:claude-3-5-haiku-latest")
    assert spec.label == "anthropic:claude-3-5-haiku-latest"
    assert isinstance(spec.options, AnthropicOptions)

    spec = parse_spec("openai-compatible:Qwen2.5-72B-Instruct@http://host:8000/v1")
    assert spec.model == "Qwen2.5-72B-Instruct"
    assert spec.base_url == "http://host:8000/v1"

    spec = parse_spec("sim:gold")
    assert (spec.provider, spec.model) == ("sim", "gold")


def test_options_in_the_spec_and_separately_merge_and_convert() -> None:
    spec = parse_spec("openai:gpt-4o-mini,temperature=0.2,seed=7", {"max_tokens": "512", "top_p": "0.9"})
    assert spec.options.generation() == {"max_tokens": 512, "seed": 7, "temperature": 0.2, "top_p": 0.9}
    # The text form reads back to an equal spec (a job stores it).
    assert parse_spec(spec.to_text()) == spec
    assert spec.to_text() == "openai:gpt-4o-mini,max_tokens=512,seed=7,temperature=0.2,top_p=0.9"


def test_simulator_fault_suffix_is_a_model_name() -> None:
    spec = parse_spec("sim:gold+fault=429*2@http://127.0.0.1:9/")
    assert spec.model == "gold+fault=429*2"
    assert spec.base_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("spec", "options", "named"),
    [
        ("openai:gpt-4o-mini", {"temperatur": "0.2"}, "'temperatur'"),
        ("anthropic:claude-3-5-haiku-latest", {"seed": "1"}, "'seed' is not supported by anthropic"),
        ("openai:gpt-4o-mini,top_k=5", {}, "'top_k' is not supported by openai"),
        ("openai:gpt-4o-mini", {"temperature": "hot"}, "temperature='hot'"),
        ("openai:gpt-4o-mini", {"temperature": "2.5"}, "temperature='2.5'"),
        ("anthropic:claude-3-5-haiku-latest", {"temperature": "1.5"}, "temperature='1.5'"),
        ("openai:gpt-4o-mini", {"max_tokens": "0"}, "max_tokens='0'"),
        ("openai:gpt-4o-mini", {"top_p": "0"}, "top_p='0'"),
        ("openai:gpt-4o-mini", {"api_key_env": "not a name"}, "api_key_env='not a name'"),
    ],
)
def test_bad_options_are_rejected_naming_the_option(spec: str, options: dict[str, str], named: str) -> None:
    with pytest.raises(BadInputError) as info:
        parse_spec(spec, options)
    assert named in str(info.value)


def test_unknown_option_message_lists_the_supported_ones() -> None:
    with pytest.raises(BadInputError) as info:
        parse_spec("openai:gpt-4o-mini", {"temprature": "0"})
    message = str(info.value)
    for supported in ("temperature", "top_p", "max_tokens", "seed", "api_key_env"):
        assert supported in message


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("gpt-4o-mini", "expected PROVIDER:MODEL"),
        ("openai:", "expected PROVIDER:MODEL"),
        ("azure:gpt-4o", "unknown provider 'azure'"),
        ("openai-compatible:Qwen2.5-72B", "needs its server"),
        ("openai-compatible:Qwen@ftp://host/v1", "must look like http://host:port/v1"),
        ("openai-compatible:Qwen@http://user:secret@host/v1", "must not carry credentials"),
        ("openai:gpt 4o", "is not a model name"),
        ("openai:gpt-4o-mini,temperature", "expected OPTION=VALUE"),
    ],
)
def test_bad_specs_are_rejected(text: str, named: str) -> None:
    with pytest.raises(BadInputError) as info:
        parse_spec(text)
    assert named in str(info.value)


def test_an_option_given_twice_is_an_error() -> None:
    with pytest.raises(BadInputError, match="'temperature' is given twice"):
        parse_spec("openai:gpt-4o-mini,temperature=0.1", {"temperature": "0.2"})
    with pytest.raises(BadInputError, match="'seed' is given twice"):
        parse_option_pairs(["seed=1", "seed=2"])
    with pytest.raises(BadInputError, match="expected OPTION=VALUE"):
        parse_option_pairs(["temperature"])


def test_credential_options_are_not_generation_options() -> None:
    spec = parse_spec("openai:gpt-4o-mini,api_key_env=TEAM_KEY")
    assert spec.options.api_key_env == "TEAM_KEY"
    assert "api_key_env" not in spec.options.generation()
