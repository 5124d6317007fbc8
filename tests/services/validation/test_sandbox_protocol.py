"""The host-server request format: the id travels outside the JSON header (so a batch's headers are
identical bytes the fork-server parses once), and a bad header is answered, never left hanging."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from services.validation.sandbox import SandboxLimits
from services.validation.sandbox.connection import ServerConnection, exchange
from services.validation.sandbox.protocol import ProtocolError, encode_request, parse_header, split_request


def _body(frame: bytes) -> bytearray:
    return bytearray(frame[4:])  # past the frame length


def test_request_round_trip_keeps_the_id_out_of_the_header() -> None:
    wire = SandboxLimits().to_wire()
    first = split_request(_body(encode_request({"id": 7, "limits": wire}, "ans = 'é'\n")))
    second = split_request(_body(encode_request({"id": 8, "limits": wire}, "ans = 2\n")))
    assert first[0] == 7 and second[0] == 8
    assert first[1] == second[1]  # same limits, same header bytes: parsed once by the server
    assert parse_header(first[1]) == {"limits": wire}
    assert bytes(first[2]).decode() == "ans = 'é'\n"


@pytest.mark.parametrize("raw", [b"[1]", b"not json", b'"text"'])
def test_a_header_that_is_not_an_object_is_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_header(raw)


def test_a_truncated_request_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        split_request(bytearray(b"\x00\x00\x00\x01\x00\x00\x00\x09{}"))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerConnection]:
    conn = ServerConnection("basic", ["--parallelism=2", "--preload=math"])
    conn.wait_ready(60)
    yield conn
    conn.close()


def _exchange(server: ServerConnection, headers: list[dict[str, Any]], program: str) -> dict[Any, Any]:
    replies: dict[Any, Any] = {}
    for header in headers:
        server.frames.append(encode_request(header, program))
    exchange([server], lambda reply: replies.__setitem__(reply.get("id"), reply), idle_timeout_s=30, window=4)
    return replies


def test_bad_headers_are_answered_and_the_server_keeps_serving(server: ServerConnection) -> None:
    good = SandboxLimits(timeout_s=5).to_wire()
    replies = _exchange(
        server,
        [
            {"id": 1, "op": "no-such-op"},
            {"id": 2, "limits": {"timeout_s": -1}},
            {"id": 3, "limits": {"bogus": 1}},
            {"id": 4, "limits": [1, 2]},
            {"id": 5, "limits": good},
            {"id": 6, "limits": good},
        ],
        "ans = 6 * 7\n",
    )
    assert set(replies) == {1, 2, 3, 4, 5, 6}
    assert "unknown op" in replies[1]["error"]
    assert all("bad request header" in replies[i]["error"] for i in (2, 3, 4))
    for i in (5, 6):
        assert '"value":"42"' in replies[i]["report"] and replies[i]["cpu_s"] > 0
    # Answered when read, so asked once the programs have been answered.
    stats = _exchange(server, [{"id": 7, "op": "stats"}], "")[7]
    assert stats["programs"] == 2 and stats["children_cpu_s"] > 0 and stats["server_cpu_s"] > 0
