"""Fixtures for API tests: the distributed test cluster and `kpdd serve`'s app over real HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn

from services.config import get_settings
from tests.services.generation.conftest import simulator, small_corpus  # noqa: F401  (re-exported fixtures)
from tests.workers.conftest import cluster  # noqa: F401  (re-exported fixture)

TOKEN = "test-token-0123456789"


class Api:
    """An HTTP client of a running API, with and without the token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.bodies: list[str] = []  # every response body, to check nothing secret leaks

    def request(
        self, method: str, path: str, *, token: str | None = TOKEN, **kwargs: object
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.request(method, self.base + path, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]
        self.bodies.append(response.text)
        return response


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Api]]:
    """Start the API (uvicorn, in a thread, on a free loopback port) with extra KPDD_ settings."""
    from services.api.app import create_app

    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**env: str) -> Api:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.05)
        servers.append((server, thread))
        return Api(f"http://127.0.0.1:{port}")

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)
    get_settings.cache_clear()
