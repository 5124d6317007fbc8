"""Where the simulator keeps batch state: a directory shared by every worker process.

Layout under the batch directory:

- `files/<id>.json` (the file object) and `files/<id>.data` (its bytes): OpenAI uploads and the
  output/error files of ended batches;
- `batches/<id>.json`: one `BatchRecord`; `batches/<id>.input.jsonl`: its requests, one
  `{"custom_id", "body"}` per line in submission order; `batches/<id>.results.jsonl`: the
  Anthropic results file once computed; `batches/<id>.succeeded`: the custom_ids answered
  successfully (for `/_sim/batch-stats`); `batches/<id>.lock`: the batch's lock.

Every write goes to a temporary file that is renamed into place, so a reader never sees half a
file. A record changes (cancel, results computed) only under the batch's `flock`, taken by one
worker at a time; the lock is held while results are computed, so they are computed once. The
lock is a blocking `flock` in the event loop: another worker touching the same batch waits for
the computation (milliseconds for thousands of lines), which is fine for a simulator.

Time: a batch ends `delay_s` after creation, or earlier at `expire_after_s` (expired) or at its
cancellation (cancelled). Requests are "processed" in file order at a steady pace over the
delay: a batch that expires or is cancelled at age `t` has answered its first
floor(n * t / delay) requests (an expired batch at least one), and the rest are expired or cancelled.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from services.teachers.simulator.wire import Provider

EndKind = Literal["completed", "expired", "cancelled", "failed"]
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass(slots=True)
class BatchRecord:
    """One batch as stored. `outcome` is set once its results are computed."""

    id: str
    provider: Provider
    created: float  # unix time, seconds
    count: int  # requests in the batch
    delay_s: float  # the simulator's settings when the batch was created
    expire_after_s: float | None
    endpoint: str = "/v1/chat/completions"
    input_file_id: str | None = None  # OpenAI
    metadata: dict[str, str] | None = None  # OpenAI
    cancel_at: float | None = None
    errors: list[dict[str, Any]] | None = None  # OpenAI: why the batch failed validation
    outcome: dict[str, Any] | None = None  # counts, output/error file ids, ended_at

    def end(self) -> tuple[float, EndKind]:
        """When the batch ends (ended, expired or cancelled) and how."""
        if self.errors:
            return self.created, "failed"
        end: float = self.created + self.delay_s
        kind: EndKind = "completed"
        if self.expire_after_s is not None and self.expire_after_s < self.delay_s:
            end, kind = self.created + self.expire_after_s, "expired"
        if self.cancel_at is not None and self.cancel_at < end:
            return self.cancel_at, "cancelled"
        return end, kind

    def ended(self, now: float) -> bool:
        return now >= self.end()[0]

    def processed(self) -> int:
        """How many requests (the first ones, in file order) are answered by the end."""
        end, kind = self.end()
        if kind == "failed":
            return 0
        if kind == "completed" or self.delay_s <= 0:
            return self.count
        share = max(0.0, end - self.created) / self.delay_s
        answered = math.floor(self.count * share + 1e-9)
        if kind == "expired" and share > 0:
            answered = max(1, answered)  # a batch that ran a while answered something
        return max(0, min(self.count, answered))

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> BatchRecord:
        return cls(**orjson.loads(raw))


@dataclass(slots=True)
class StoredFile:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    extra: dict[str, Any] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


def new_id(prefix: str) -> str:
    """A unique id that sorts by creation time (microseconds, then random bits)."""
    return f"{prefix}{time.time_ns() // 1000:014x}{secrets.token_hex(6)}"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class BatchStore:
    """Files and batches under one directory (see the module doc); safe across processes."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.files = self.root / "files"
        self.batches = self.root / "batches"
        self._ensure()

    def _ensure(self) -> None:
        self.files.mkdir(parents=True, exist_ok=True)
        self.batches.mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        """Forget every file and batch (for `/_sim/reset`)."""
        for folder in (self.files, self.batches):
            shutil.rmtree(folder, ignore_errors=True)
        self._ensure()

    # --- files ------------------------------------------------------------------------------

    def add_file(self, filename: str, purpose: str, data: bytes, prefix: str = "file-") -> StoredFile:
        stored = StoredFile(new_id(prefix), len(data), int(time.time()), filename, purpose)
        write_atomic(self.files / f"{stored.id}.data", data)
        write_atomic(self.files / f"{stored.id}.json", orjson.dumps(asdict(stored)))
        return stored

    def file(self, file_id: str) -> StoredFile | None:
        if not _ID_RE.match(file_id):
            return None
        try:
            return StoredFile(**orjson.loads((self.files / f"{file_id}.json").read_bytes()))
        except FileNotFoundError:
            return None

    def file_data(self, file_id: str) -> bytes | None:
        if not _ID_RE.match(file_id):
            return None
        try:
            return (self.files / f"{file_id}.data").read_bytes()
        except FileNotFoundError:
            return None

    # --- batches ----------------------------------------------------------------------------

    def _path(self, batch_id: str, suffix: str) -> Path:
        return self.batches / f"{batch_id}{suffix}"

    def create(self, record: BatchRecord, lines: list[tuple[str, Any]]) -> None:
        """Store a new batch and its requests (`(custom_id, body)` in order); the record is
        written last, so a batch is visible only once its input is complete."""
        data = b"".join(orjson.dumps({"custom_id": cid, "body": body}) + b"\n" for cid, body in lines)
        write_atomic(self._path(record.id, ".input.jsonl"), data)
        self.save(record)

    def save(self, record: BatchRecord) -> None:
        write_atomic(self._path(record.id, ".json"), record.to_json())

    def get(self, batch_id: str) -> BatchRecord | None:
        if not _ID_RE.match(batch_id):
            return None
        try:
            return BatchRecord.from_json(self._path(batch_id, ".json").read_bytes())
        except FileNotFoundError:
            return None

    def lines(self, batch_id: str) -> Iterator[tuple[str, Any]]:
        """The batch's requests, `(custom_id, body)`, in submission order."""
        with self._path(batch_id, ".input.jsonl").open("rb") as fh:
            for raw in fh:
                line = orjson.loads(raw)
                yield line["custom_id"], line["body"]

    def all(self, provider: Provider) -> list[BatchRecord]:
        """Every batch of `provider`, newest first."""
        out = []
        for path in self.batches.glob("*.json"):
            if path.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):  # cleared meanwhile
                record = BatchRecord.from_json(path.read_bytes())
                if record.provider == provider:
                    out.append(record)
        out.sort(key=lambda r: (r.created, r.id), reverse=True)
        return out

    def write_results(self, batch_id: str, data: bytes) -> None:
        write_atomic(self._path(batch_id, ".results.jsonl"), data)

    def results(self, batch_id: str) -> bytes | None:
        try:
            return self._path(batch_id, ".results.jsonl").read_bytes()
        except FileNotFoundError:
            return None

    def write_succeeded(self, batch_id: str, custom_ids: list[str]) -> None:
        write_atomic(self._path(batch_id, ".succeeded"), "".join(f"{c}\n" for c in custom_ids).encode())

    def succeeded(self, batch_id: str) -> list[str]:
        """The custom_ids answered successfully (empty until the results are computed)."""
        try:
            return self._path(batch_id, ".succeeded").read_text().split()
        except FileNotFoundError:
            return []

    @contextlib.contextmanager
    def locked(self, batch_id: str) -> Iterator[BatchRecord | None]:
        """The batch's record, read under its lock (None: no such batch); save changes with
        `save` before leaving the block."""
        with self._path(batch_id, ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield self.get(batch_id)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
