"""Fixtures and helpers shared by the teacher-client tests (test_clients*, test_cache*, test_keys*,
test_probe*). No tests here.

Every teacher in these tests is the real `openai` or `anthropic` SDK talking HTTP to the project's
simulator, started in a thread per test (so its attempt numbers, which drive forced faults such
as `500*2`, start fresh). Backoff waits go to a `Sleeps` recorder instead of the clock: the
client's `sleep` is a constructor argument, not a patched SDK.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import Engine

from db.engine import get_engine
from services.config import Settings
from services.teachers.base import TeacherClient
from services.teachers.registry import build_client
from services.teachers.simulator import (
    CorpusSource,
    ProblemBank,
    SimulatorConfig,
    SimulatorHandle,
    run_in_thread,
)
from tests.conftest import DATASETS

GSM8K_TEST = DATASETS / "gsm8k" / "test.jsonl"
# Recognisable fake keys: the leak tests look for them (and their 16-character ends) everywhere.
FAKE_OPENAI_KEY = "sk-kpdd-FAKE-openai-7f3c9a1e5b2d4c6e8f0a1b3c5d7e9f11"
FAKE_ANTHROPIC_KEY = "sk-ant-kpdd-FAKE-anthropic-2b4d6f8a0c1e3a5c7e9b1d3f5a7c9e02"
FAKE_KEYS = (FAKE_OPENAI_KEY, FAKE_ANTHROPIC_KEY)


def key_fragments(key: str) -> list[str]:
    """The key and its distinctive parts (a leak may be partial or masked in the middle)."""
    return [key, key[:20], key[-16:], key.split("FAKE-", 1)[1]]


@dataclass(slots=True)
class Sleeps:
    """A `sleep` that records the waits instead of waiting."""

    waits: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@dataclass(slots=True)
class GoldItem:
    question: str
    answer: str


def gsm8k_items(n: int) -> list[GoldItem]:
    """The first `n` GSM8K test problems with their numeric gold answers."""
    items = []
    with GSM8K_TEST.open(encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            items.append(GoldItem(record["question"], record["answer"].rsplit("####", 1)[1].strip()))
            if len(items) == n:
                break
    return items


def teacher_settings(**overrides: Any) -> Settings:
    """Settings for tests: short timeout, small backoffs (recorded, not slept)."""
    values: dict[str, Any] = {
        "sim_url": None,
        "prices_file": None,
        "teacher_timeout_s": 5.0,
        "teacher_max_attempts": 4,
        "teacher_backoff_s": 0.5,
        "teacher_backoff_max_s": 4.0,
        "teacher_retry_after_max_s": 30.0,
    }
    values.update(overrides)
    return Settings(**values)


def spec_for(provider: str, sim: SimulatorHandle, fault: str | None = None, model: str | None = None) -> str:
    """A spec reaching `sim` through `provider`'s wire format; `fault` forces a simulated fault."""
    default_model = {
        "openai": "gpt-4o-mini",
        "anthropic": "claude-haiku-4-5",
        "openai-compatible": "Qwen2.5-72B-Instruct",
        "sim": "gold",
    }[provider]
    name = (model or default_model) + (f"+fault={fault}" if fault else "")
    url = sim.url if provider in ("anthropic", "sim") else sim.openai_base_url
    return f"{provider}:{name}@{url}"


def make_client(spec: str, sleeps: Sleeps | None = None, **settings: Any) -> TeacherClient:
    return build_client(spec, settings=teacher_settings(**settings), sleep=sleeps or Sleeps())


@pytest.fixture(scope="session")
def sim_bank() -> ProblemBank:
    """The GSM8K test problems, loaded once and shared by every simulator of the session."""
    bank = ProblemBank()
    bank.load_corpus(CorpusSource("gsm8k", GSM8K_TEST))
    return bank


@pytest.fixture
def sim(sim_bank: ProblemBank) -> Iterator[SimulatorHandle]:
    """A fresh simulator in a thread (fresh attempt counters and stats)."""
    with run_in_thread(SimulatorConfig(hang_max_s=10.0), sim_bank) as handle:
        yield handle


@pytest.fixture
def fake_keys(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
    return FAKE_KEYS


@pytest.fixture
def engine(sqlite_url: str) -> Engine:
    return get_engine(sqlite_url)


# --- a server that misbehaves on purpose -----------------------------------------------------------


@dataclass(slots=True)
class EchoServer:
    """An HTTP server answering every POST with `status` and an error body that echoes the key
    it was sent, as careless servers do. `seen` holds the credentials each request carried."""

    url: str
    seen: list[str]
    _server: ThreadingHTTPServer

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_echo_server(status: int = 401) -> EchoServer:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            auth = self.headers.get("authorization") or ""
            key = self.headers.get("x-api-key") or (auth[7:] if auth.lower().startswith("bearer ") else auth)
            seen.append(key)
            body = json.dumps(
                {
                    "error": {
                        "message": f"Incorrect API key provided: {key}. Your key was {key[:8]}...{key[-6:]}",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                        "echo": {"key": key},
                    }
                }
            ).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return EchoServer(f"http://127.0.0.1:{server.server_address[1]}", seen, server)


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    server = start_echo_server()
    yield server
    server.close()


def closed_port_url() -> str:
    """A loopback URL with nothing listening (connection refused)."""
    from tests.servers import free_port

    return f"http://127.0.0.1:{free_port()}/v1"
