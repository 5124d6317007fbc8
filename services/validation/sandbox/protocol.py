"""Framing between the host (`Sandbox`) and the fork-server, over a pair of pipes.

A frame is a 4-byte big-endian length and that many bytes. Replies (server to host) carry one
UTF-8 JSON object. Requests (host to server) carry a 4-byte request id, a 4-byte header length, a
JSON header (`limits`, or `op` for a control request) and the program's UTF-8 bytes, kept apart so
that the fork-server never decodes a program: it holds the bytes in a buffer it zeroes once the
child is forked. The id stays out of the JSON so that every request of a batch has the same header
bytes, which the server parses once (`header_cache`).

There is no pickle anywhere: the host and the server only ever exchange JSON and raw text.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

MAX_FRAME_BYTES = 64 << 20
_LEN = struct.Struct(">I")
_ID_AND_LEN = struct.Struct(">II")


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed frame."""


_REPLY_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # made once, not per reply


def encode_reply(obj: dict[str, Any]) -> bytes:
    body = _REPLY_ENCODER.encode(obj).encode("utf-8", "surrogatepass")
    return _LEN.pack(len(body)) + body


def encode_request(header: dict[str, Any], program: str) -> bytes:
    """A request frame; `header["id"]` (an int) travels as the binary id, the rest as JSON."""
    req_id = int(header.get("id") or 0)
    head = json.dumps({k: v for k, v in header.items() if k != "id"}, separators=(",", ":")).encode()
    code = program.encode("utf-8", "surrogatepass")
    body_len = _ID_AND_LEN.size + len(head) + len(code)
    if body_len > MAX_FRAME_BYTES:
        raise ValueError(f"program too large for the sandbox ({len(code)} bytes)")
    return _LEN.pack(body_len) + _ID_AND_LEN.pack(req_id, len(head)) + head + code


def split_request(body: bytearray) -> tuple[int, bytes, memoryview]:
    """The id, the raw JSON header and a view of the program bytes of a request body (no copy of
    the program). Parse the header with `parse_header`."""
    if len(body) < _ID_AND_LEN.size:
        raise ProtocolError("request shorter than its id and header length")
    req_id, head_len = _ID_AND_LEN.unpack_from(body, 0)
    start = _ID_AND_LEN.size
    if start + head_len > len(body):
        raise ProtocolError("request header runs past the frame")
    return req_id, bytes(body[start : start + head_len]), memoryview(body)[start + head_len :]


def parse_header(raw: bytes) -> dict[str, Any]:
    """A request's JSON header; raises `ProtocolError` if it is not a JSON object."""
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"request header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("request header is not a JSON object")
    return header


class FrameReader:
    """Reads frames from a non-blocking fd without ever reading past the current frame.

    Reading no further than needed keeps requests that are not being served yet in the kernel's
    pipe buffer instead of the fork-server's memory, where a forked child could find them.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._head = bytearray()
        self._body: bytearray | None = None
        self._got = 0
        self.eof = False

    def read_frame(self) -> bytearray | None:
        """One complete frame body if available now; None if more bytes are needed (or EOF)."""
        while True:
            if self._body is None:
                try:
                    chunk = os.read(self.fd, _LEN.size - len(self._head))
                except BlockingIOError:
                    return None
                if not chunk:
                    self.eof = True
                    return None
                self._head += chunk
                if len(self._head) < _LEN.size:
                    continue
                (length,) = _LEN.unpack(self._head)
                if length > MAX_FRAME_BYTES:
                    raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
                self._body, self._got = bytearray(length), 0
            if self._got < len(self._body):
                try:
                    n = os.readv(self.fd, [memoryview(self._body)[self._got :]])
                except BlockingIOError:
                    return None
                if n == 0:
                    self.eof = True
                    return None
                self._got += n
                if self._got < len(self._body):
                    continue
            body, self._body, self._head = self._body, None, bytearray()
            return body


def decode_reply(body: bytes | bytearray) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(body))
    except ValueError as exc:
        raise ProtocolError(f"reply is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("reply is not a JSON object")
    return obj


def write_all(fd: int, data: bytes) -> None:
    """Write every byte to a blocking fd."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
