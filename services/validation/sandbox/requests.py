"""What the fork-server makes of a request before forking, made once per distinct request shape.

Every program of a batch arrives with the same header bytes (its limits), so the server parses
them, builds the `SandboxLimits` and the child's rlimit pairs once and looks them up afterwards.
That is for its page faults more than its CPU: after each fork, every object the server touches
while a child still shares the page costs it a copy-on-write fault, and building a dataclass
from JSON touches dozens.
"""

from __future__ import annotations

from services.validation.sandbox.child import RLimits, resource_limits
from services.validation.sandbox.limits import SandboxLimits
from services.validation.sandbox.protocol import parse_header

_MAX_ENTRIES = 64


class RequestCache:
    """Parsed headers by their raw bytes, and rlimit pairs by limits, address space and nproc."""

    def __init__(self) -> None:
        self._headers: dict[bytes, tuple[str | None, SandboxLimits | None]] = {}
        self._rlimits: dict[tuple[int, int, int], tuple[SandboxLimits, RLimits]] = {}

    def header(self, raw: bytes) -> tuple[str | None, SandboxLimits | None]:
        """(op, None) for a control request, (None, limits) for a program. Raises `ProtocolError`
        for a header that is not a JSON object, `ValueError`/`TypeError` for bad limits."""
        cached = self._headers.get(raw)
        if cached is not None:
            return cached
        header = parse_header(raw)
        op = header.get("op")
        try:
            parsed = (str(op), None) if op else (None, SandboxLimits.from_wire(header.get("limits") or {}))
        except AttributeError as exc:  # "limits" is not an object
            raise TypeError(str(exc)) from None
        if len(self._headers) >= _MAX_ENTRIES:
            self._headers.clear()
        self._headers[raw] = parsed
        return parsed

    def rlimits(self, limits: SandboxLimits, mapped: int, nproc: int) -> RLimits:
        """`resource_limits`, cached by the limits object's identity (hashing a dataclass runs
        Python code); the entry keeps the object alive, so its id is not reused meanwhile."""
        key = (id(limits), mapped, nproc)
        entry = self._rlimits.get(key)
        if entry is None or entry[0] is not limits:
            if len(self._rlimits) >= _MAX_ENTRIES:
                self._rlimits.clear()
            entry = self._rlimits[key] = (limits, resource_limits(limits, mapped, nproc))
        return entry[1]
