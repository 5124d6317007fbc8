"""Teacher specs and options: parsed, checked before any call, errors that name the culprit."""

from __future__ import annotations

import traceback

import pytest

from services.errors import BadInputError
from services.teachers.spec import (
    AnthropicOptions,
    OpenAIOptions,
    parse_option_pairs,
    parse_spec,
    redact_spec,
)


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
        ("openai:gpt-4o-mini", {"api_key_env": "not a name"}, "api_key_env (value not shown"),
        ("openai:gpt-4o-mini", {"api_key_env": "TEAM_VARIABLE"}, "api_key_env='TEAM_VARIABLE'"),
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


# --- Secrets in specs: never echoed, never accepted in a URL, keys only from key variables ---

SECRET = "s3cr3tPa55"


def _failure_text(text: str, options: dict[str, str] | None = None) -> str:
    """The message of the BadInputError that parsing raises, plus the whole chain as the CLI's
    traceback would print it."""
    with pytest.raises(BadInputError) as info:
        parse_spec(text, options)
    return str(info.value) + "\n" + "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize(
    ("text", "options", "named"),
    [
        # PROVIDER:MODEL missing
        (f"http://user:{SECRET}@host/v1", None, "unknown provider"),
        (f"openai-compatible:@http://user:{SECRET}@host/v1", None, "is not a model name"),
        # unknown provider
        (f"azure:gpt-4o@http://user:{SECRET}@host/v1", None, "unknown provider 'azure'"),
        (f"azure:gpt-4o@http://host/v1?api_key={SECRET}", None, "unknown provider 'azure'"),
        # model missing or not a model name
        (f"openai-compatible:http://user:{SECRET}@host:8000/v1", None, "the model is missing or is a URL"),
        (f"openai-compatible:Qwen 72B@http://user:{SECRET}@host/v1", None, "is not a model name"),
        (f"openai-compatible:Qwen 72B@http://host/v1?token={SECRET}", None, "is not a model name"),
        # base URL of the wrong shape
        (f"openai-compatible:Qwen@ftp://user:{SECRET}@host/v1", None, "must look like http://host:port/v1"),
        (f"openai-compatible:Qwen@user:{SECRET}@host/v1", None, "must look like http://host:port/v1"),
        (f"openai-compatible:Qwen@http://user:{SECRET}@host:port/v1", None, "must look like"),
        (f"openai-compatible:Qwen@http://[::1/v1?key={SECRET}", None, "must look like"),
        # a password cut by a comma: the URL's remainder becomes a bad port, or a bad option
        (f"openai-compatible:Qwen@http://user:ab,{SECRET}@host/v1", None, "must look like"),
        (f"openai-compatible:Qwen@http://user:12,{SECRET}@host/v1", None, "expected OPTION=VALUE"),
        # credentials in the URL
        (f"openai-compatible:Qwen@http://user:{SECRET}@host/v1", None, "must not carry credentials"),
        (f"openai:gpt-4o-mini@https://host/v1?api_key={SECRET}", None, "must not carry credentials"),
        # bad options after a URL with a secret
        (f"openai:gpt-4o-mini@https://host/v1?key={SECRET},temperature", None, "must not carry credentials"),
        (f"openai-compatible:Qwen@http://host/v1?x={SECRET},temperature", None, "expected OPTION=VALUE"),
        (f"openai-compatible:Qwen@http://host/v1?x={SECRET},seed=1", {"seed": "2"}, "given twice"),
        (f"openai-compatible:Qwen@http://host/v1?x={SECRET},top_k=1", None, "'top_k' is not supported"),
        (f"openai-compatible:Qwen@http://host/v1?x={SECRET},rpm=0", None, "rpm='0' is invalid"),
        # the key pasted where its variable's name belongs
        ("openai:gpt-4o-mini", {"api_key_env": f"sk-{SECRET}"}, "value not shown"),
        ("openai:gpt-4o-mini", {"api_key_env": f"sk_{SECRET.lower()}"}, "value not shown"),
    ],
)
def test_no_error_echoes_a_credential(text: str, options: dict[str, str] | None, named: str) -> None:
    failure = _failure_text(text, options)
    assert named in failure
    assert SECRET not in failure and SECRET.lower() not in failure


def test_redaction_masks_user_info_query_and_fragment_only() -> None:
    assert redact_spec("openai:gpt-4o-mini,temperature=0.2") == "openai:gpt-4o-mini,temperature=0.2"
    assert (
        redact_spec("sim:gold+fault=429*2@http://127.0.0.1:9/") == "sim:gold+fault=429*2@http://127.0.0.1:9/"
    )
    assert redact_spec("x:m@http://u:p@ss@host/v1,seed=1") == "x:m@http://[redacted]@host/v1,seed=1"
    assert redact_spec("x:m@u:p@host/v1") == "x:m@[redacted]@host/v1"
    assert redact_spec("x:m@http://host/v1?api_key=k,seed=1") == "x:m@http://host/v1?[redacted]"
    assert redact_spec("x:m@http://host/v1#token=k") == "x:m@http://host/v1#[redacted]"


@pytest.mark.parametrize(
    "query",
    [
        "api_key=k1",
        "key=k1",
        "token=k1",
        "access_token=k1",
        "api-key=k1",
        "X-Api-Key=k1",
        "apikey=k1",
        "client_secret=k1",
        "password=k1",
        "auth=k1",
        "sig=k1",
        "a=1&subscription-key=k1",
    ],
)
def test_a_key_in_the_query_string_is_refused_like_user_info(query: str) -> None:
    with pytest.raises(BadInputError) as info:
        parse_spec(f"openai:gpt-4o-mini@https://gateway.example/v1?{query}")
    message = str(info.value)
    assert "must not carry credentials (query parameter" in message
    assert "put the key in OPENAI_API_KEY" in message  # the provider's own key variable
    assert "k1" not in message


def test_credential_advice_names_the_providers_key_variable() -> None:
    for spec, variable in [
        ("openai:gpt-4o-mini@http://u:p@h/v1", "OPENAI_API_KEY"),
        ("anthropic:claude-3-5-haiku-latest@http://u:p@h", "ANTHROPIC_API_KEY"),
        ("anthropic:claude-3-5-haiku-latest@http://h?token=p", "ANTHROPIC_API_KEY"),
        ("openai-compatible:Qwen@http://h/v1?token=p", "api_key_env=MY_SERVER_API_KEY"),
    ]:
        with pytest.raises(BadInputError, match="must not carry credentials") as info:
            parse_spec(spec)
        assert variable in str(info.value)


def test_a_query_string_without_credentials_is_kept() -> None:
    spec = parse_spec("openai-compatible:gpt-4o@https://res.example/openai/v1?api-version=2024-10-21")
    assert spec.base_url == "https://res.example/openai/v1?api-version=2024-10-21"


@pytest.mark.parametrize(
    ("variable", "rule"),
    [
        ("KPDD_DATABASE_URL", "KPDD_ variables are kpdd's own settings"),
        ("KPDD_TEAM_API_KEY", "KPDD_ variables are kpdd's own settings"),
        ("AWS_SECRET_ACCESS_KEY", "AWS_ variables hold infrastructure credentials"),
        ("GITHUB_TOKEN", "GITHUB_ variables hold infrastructure credentials"),
        ("DATABASE_URL", "does not end in _API_KEY, _KEY or _TOKEN"),
        ("HOME", "does not end in _API_KEY, _KEY or _TOKEN"),
        ("team_api_key", "not an upper-case variable name"),
    ],
)
def test_api_key_env_names_only_key_variables(variable: str, rule: str) -> None:
    with pytest.raises(BadInputError) as info:
        parse_spec("openai-compatible:Qwen@http://host/v1", {"api_key_env": variable})
    message = str(info.value)
    assert message.startswith("teacher option api_key_env")
    assert rule in message
    assert "ending in _API_KEY, _KEY or _TOKEN" in message  # the rule, stated


@pytest.mark.parametrize("variable", ["VLLM_API_KEY", "VLLM_KEY", "HF_TOKEN", "TEAM_KEY", "OPENAI_API_KEY"])
def test_api_key_env_accepts_key_variables(variable: str) -> None:
    assert parse_spec(f"openai:gpt-4o-mini,api_key_env={variable}").options.api_key_env == variable


# --- Rate-limit options: bounded and finite ---


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("rpm", "1e-300"),
        ("rpm", "0.01"),
        ("rpm", "0"),
        ("rpm", "-5"),
        ("rpm", "inf"),
        ("rpm", "nan"),
        ("rpm", "1e8"),
        ("tpm", "99"),
        ("tpm", "1e-300"),
        ("tpm", "inf"),
        ("tpm", "nan"),
        ("tpm", "1e11"),
    ],
)
def test_rate_limits_out_of_bounds_are_rejected_stating_the_bounds(option: str, value: str) -> None:
    with pytest.raises(BadInputError) as info:
        parse_spec("openai:gpt-4o-mini", {option: value})
    message = str(info.value)
    assert f"{option}={value!r} is invalid" in message
    bounds = "from 1 to 10,000,000" if option == "rpm" else "from 100 to 10,000,000,000"
    assert f"{option} must be " in message and f"a finite number {bounds}" in message


def test_rate_limits_at_their_bounds_are_accepted() -> None:
    for rpm, tpm in (("1", "100"), ("10000000", "10000000000"), ("0.5e3", "2.5e5")):
        spec = parse_spec(f"openai:gpt-4o-mini,rpm={rpm},tpm={tpm}")
        assert (spec.options.rpm, spec.options.tpm) == (float(rpm), float(tpm))
