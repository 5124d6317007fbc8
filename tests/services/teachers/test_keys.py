"""API keys: read from the environment only, never stored, logged or echoed.

The leak test sends recognisable fake keys through both SDKs, over every path (success, retries,
refusal, truncation, bad request, a timeout, and a server that echoes the key in its error),
with every logger at DEBUG, then scans every text value of every table, the captured logs and
the captured stdout/stderr for the keys and their distinctive fragments.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, select

from db.engine import get_engine
from services.errors import ConfigError
from services.kpdd.prompts import render_prompt
from services.teachers.base import TeacherRequest
from services.teachers.keys import read_key
from services.teachers.rationale import CallFailure, RationaleWork, produce_rationale
from services.teachers.simulator import SimulatorHandle
from tests.services.teachers.clients_support import (
    FAKE_ANTHROPIC_KEY,
    FAKE_KEYS,
    FAKE_OPENAI_KEY,
    EchoServer,
    echo_server,
    fake_keys,
    gsm8k_items,
    key_fragments,
    make_client,
    sim,
    sim_bank,
    spec_for,
)

__all__ = ["echo_server", "fake_keys", "sim", "sim_bank"]  # fixtures used here


def _every_stored_text(engine: Engine) -> list[str]:
    """Every value of every column of every table, as text (JSON columns included)."""
    metadata = MetaData()
    metadata.reflect(engine)
    texts: list[str] = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                texts.extend(repr(value) for value in row)
    return texts


def _assert_no_key_in(texts: list[str], where: str) -> None:
    for key in FAKE_KEYS:
        for fragment in key_fragments(key):
            hits = [t for t in texts if fragment in t]
            assert not hits, f"{fragment!r} found in {where}: {hits[0][:300]}"


def test_no_key_reaches_the_database_logs_or_output(
    sim: SimulatorHandle,
    db_url: str,
    fake_keys: tuple[str, str],
    echo_server: EchoServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger, so the SDKs' and httpx's debug logs too
    for name in ("openai", "anthropic", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    engine = get_engine(db_url)
    item = gsm8k_items(1)[0]
    outcomes = []
    for provider in ("openai", "anthropic"):
        for fault in (None, "429*1", "500*1", "refusal", "truncate", "malformed", "nonsense"):
            with make_client(spec_for(provider, sim, fault=fault), teacher_backoff_s=0.01) as client:
                for stage_mode in ("single", "staged"):
                    work = RationaleWork(item.question, "cot", stage_mode)
                    outcomes.append(produce_rationale(engine, client, work))
                    print(repr(client), outcomes[-1].to_json())
        with make_client(
            spec_for(provider, sim, fault="hang"), teacher_timeout_s=0.2, teacher_max_attempts=1
        ) as c:
            outcomes.append(produce_rationale(engine, c, RationaleWork(item.question, "pot")))
    # A server that echoes the key it was sent, in full and masked, in a 401 error body.
    for spec in (f"openai:gpt-4o-mini@{echo_server.url}/v1", f"anthropic:claude-haiku-4-5@{echo_server.url}"):
        with make_client(spec) as client:
            outcome = produce_rationale(engine, client, RationaleWork(item.question, "pot"))
            assert isinstance(outcome.result, CallFailure) and outcome.result.kind == "auth"
            logging.getLogger("test").error("call failed: %s", outcome.result.message)
            outcomes.append(outcome)
    assert echo_server.seen == [FAKE_OPENAI_KEY, FAKE_ANTHROPIC_KEY]  # the keys were really sent

    stored = _every_stored_text(engine)
    assert len(stored) > 100
    _assert_no_key_in(stored, "the database")
    assert any("[redacted]" in text for text in stored)  # the echoed key was scrubbed, not dropped
    _assert_no_key_in([r.getMessage() for r in caplog.records] + [caplog.text], "the logs")
    assert any("HTTP Request" in r.getMessage() for r in caplog.records)  # the debug logs were on
    out, err = capsys.readouterr()
    _assert_no_key_in([out, err], "stdout/stderr")
    _assert_no_key_in([repr(o.to_json()) for o in outcomes], "the outcomes")


def test_a_missing_key_is_a_clear_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY, which is not set"):
        make_client("openai:gpt-4o-mini")
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY, which is not set"):
        make_client("anthropic:claude-3-5-haiku-latest")
    monkeypatch.setenv("OPENAI_API_KEY", "   ")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        make_client("openai:gpt-4o-mini")


def test_a_spec_may_name_its_own_key_variable(
    sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch, echo_server: EchoServer
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    spec = f"openai:gpt-4o-mini@{echo_server.url}/v1,api_key_env=TEST_TEAM_API_KEY"
    with pytest.raises(ConfigError, match="TEST_TEAM_API_KEY") as info:
        make_client(spec)
    assert "OPENAI_API_KEY, which" not in str(info.value)
    monkeypatch.setenv("TEST_TEAM_API_KEY", FAKE_OPENAI_KEY + "-team")
    with make_client(spec) as client:
        result = client.call(TeacherRequest(render_prompt(gsm8k_items(1)[0].question, "cot")))
    assert echo_server.seen == [FAKE_OPENAI_KEY + "-team"]
    assert result.error is not None and result.error.kind == "auth" and not result.error.retryable
    assert FAKE_OPENAI_KEY not in result.error.message and "[redacted]" in result.error.message


def test_a_key_is_never_read_from_a_variable_that_does_not_hold_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # A spec is checked when parsed; this guards any other way to a client (an old stored spec).
    monkeypatch.setenv("KPDD_DATABASE_URL", "postgresql://kpdd:dbpassword@db/kpdd")
    with pytest.raises(ConfigError, match="may not read its API key from KPDD_DATABASE_URL") as info:
        read_key("KPDD_DATABASE_URL", "openai-compatible:Qwen")
    assert "dbpassword" not in str(info.value)
    assert "ending in _API_KEY, _KEY or _TOKEN" in str(info.value)
    monkeypatch.setenv("TEAM_API_KEY", "sk-team")
    assert read_key("TEAM_API_KEY", "openai-compatible:Qwen") == "sk-team"


def test_an_openai_compatible_server_never_gets_the_openai_key(
    fake_keys: tuple[str, str], echo_server: EchoServer
) -> None:
    with make_client(f"openai-compatible:Qwen2.5-72B-Instruct@{echo_server.url}/v1") as client:
        client.call(TeacherRequest(render_prompt(gsm8k_items(1)[0].question, "cot")))
    assert echo_server.seen == ["no-key"]


def test_the_client_repr_and_spec_hold_no_key(fake_keys: tuple[str, str], sim: SimulatorHandle) -> None:
    with make_client(spec_for("anthropic", sim)) as client:
        shown: list[Any] = [repr(client), client.spec.to_text(), repr(client.spec), client.label]
    _assert_no_key_in([str(s) for s in shown], "the client's public face")
