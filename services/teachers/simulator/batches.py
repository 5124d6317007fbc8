"""The simulator's batch endpoints: OpenAI Files + Batch, Anthropic Message Batches.

Served (auth as the model endpoints: 401 without a key):

- OpenAI: `POST /v1/files` (multipart, `purpose=batch`), `GET /v1/files/{id}`,
  `GET /v1/files/{id}/content`, `POST /v1/batches`, `GET /v1/batches` (`limit`, `after`; newest
  first), `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`;
- Anthropic: `POST /v1/messages/batches`, `GET /v1/messages/batches` (`limit`, `after_id`,
  `before_id`; newest first), `GET /v1/messages/batches/{id}`,
  `POST /v1/messages/batches/{id}/cancel`, `GET /v1/messages/batches/{id}/results`;
- `GET /_sim/batch-stats`: `batches`, `lines` (requests received over all batches),
  `distinct_custom_ids`, `resubmitted_after_success` (lines whose custom_id had been answered
  successfully in a batch created earlier, same provider) - so a test can prove that nothing
  was paid for twice.

A batch ends `batch_delay_s` after creation (see `batch_store` for expiry, cancellation and
which requests are answered). Its results are computed lazily, by the first request that looks
at the batch after its end (retrieve, list, results, stats), once, under the batch's lock; each
request is answered as the synchronous endpoint would (`batch_answers`). A cancel of a batch
that has already ended returns it unchanged. State lives in `config.batch_dir` (shared by the
workers); `/_sim/reset` clears it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.web_request import BaseRequest

from services.teachers.simulator.batch_answers import answer_line, bug_answer, drawn_error
from services.teachers.simulator.batch_store import BatchRecord, BatchStore, new_id
from services.teachers.simulator.batch_wire import (
    ANTHROPIC_MAX_BYTES,
    OPENAI_ENDPOINT,
    OPENAI_MAX_FILE_BYTES,
    BatchRequestError,
    anthropic_batch,
    anthropic_result_line,
    openai_batch,
    openai_not_run_line,
    openai_result_line,
    parse_anthropic_requests,
    parse_openai_input,
)
from services.teachers.simulator.wire import Provider

if TYPE_CHECKING:
    from services.teachers.simulator.app import SimulatorApp

log = logging.getLogger(__name__)

_JSON = "application/json"
_PREFIXES = ("/v1/files", "/v1/batches", "/v1/messages/batches")
FILE_PURPOSES = ("batch", "assistants", "fine-tune", "vision", "user_data")


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type=_JSON)


def _limit(request: BaseRequest, default: int, most: int) -> int:
    try:
        value = int(request.query.get("limit", default))
    except ValueError:
        raise BatchRequestError("limit must be an integer") from None
    if not 1 <= value <= most:
        raise BatchRequestError(f"limit must be between 1 and {most}")
    return value


class SimBatches:
    """The batch endpoints of one `SimulatorApp` (one worker); the state is on disk."""

    def __init__(self, app: SimulatorApp, root: str | None) -> None:
        self.app = app
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:  # one worker on its own (a test's app); several get a shared batch_dir
            self._tmp = tempfile.TemporaryDirectory(prefix="kpdd-sim-batches-")
            root = self._tmp.name
        self.store = BatchStore(root)

    @staticmethod
    def serves(path: str) -> bool:
        return path.startswith(_PREFIXES) or path == "/_sim/batch-stats"

    def reset(self) -> None:
        self.store.clear()

    # --- routing ---------------------------------------------------------------------------------

    async def handle(self, request: BaseRequest) -> web.StreamResponse:
        path, method = request.path, request.method
        if path == "/_sim/batch-stats" and method == "GET":
            return _json(self.batch_stats())
        provider: Provider = "anthropic" if path.startswith("/v1/messages/") else "openai"
        if not self.app._has_key(provider, request):
            self.app.stats.add("auth_failed")
            where = "the Authorization header (Bearer)" if provider == "openai" else "the x-api-key header"
            return self.app._error(provider, 401, f"no API key provided; send any non-empty key in {where}")
        parts = path.strip("/").split("/")[1:]  # without "v1"
        if provider == "anthropic":
            parts = parts[1:]  # without "messages"
        try:
            response = await self._route(provider, method, parts, request)
        except BatchRequestError as exc:
            self.app.stats.add("bad_request")
            return self.app._error(provider, 400, str(exc))
        if response is None:
            self.app.stats.add("not_found")
            return self.app._error(provider, 404, f"{method} {path} is not served by the teacher simulator")
        return response

    async def _route(
        self, provider: Provider, method: str, parts: list[str], request: BaseRequest
    ) -> web.StreamResponse | None:
        kind, rest = parts[0], parts[1:]
        if kind not in ("files", "batches") or (provider == "anthropic" and kind != "batches"):
            return None
        if provider == "openai" and kind == "files":
            if method == "POST" and not rest:
                return await self._upload(request)
            if method == "GET" and len(rest) == 1:
                stored = self.store.file(rest[0])
                return _json(stored.wire()) if stored else self._missing(provider, "file", rest[0])
            if method == "GET" and len(rest) == 2 and rest[1] == "content":
                data = self.store.file_data(rest[0])
                if data is None:
                    return self._missing(provider, "file", rest[0])
                return web.Response(body=data, content_type="application/octet-stream")
            return None
        if method == "POST" and not rest:
            if provider == "openai":
                return await self._create_openai(request)
            return await self._create_anthropic(request)
        if method == "GET" and not rest:
            return self._list(provider, request)
        if not rest:
            return None
        batch_id = rest[0]
        if method == "GET" and len(rest) == 1:
            record = self.ensure_results(batch_id)
            if record is None or record.provider != provider:
                return self._missing(provider, "batch", batch_id)
            return self._batch(provider, record, request)
        if method == "POST" and rest[1:] == ["cancel"]:
            return self._cancel(provider, batch_id, request)
        if provider == "anthropic" and method == "GET" and rest[1:] == ["results"]:
            return self._anthropic_results(batch_id)
        return None

    def _missing(self, provider: Provider, what: str, ident: str) -> web.Response:
        return self.app._error(provider, 404, f"no {what} with id {ident!r}")

    def _batch(self, provider: Provider, record: BatchRecord, request: BaseRequest) -> web.Response:
        if provider == "openai":
            return _json(openai_batch(record))
        return _json(anthropic_batch(record, f"{request.scheme}://{request.host}"))

    # --- creation --------------------------------------------------------------------------------

    async def _upload(self, request: BaseRequest) -> web.Response:
        if request.content_length is not None and request.content_length > OPENAI_MAX_FILE_BYTES + 65536:
            raise BatchRequestError(f"a batch input file holds at most {OPENAI_MAX_FILE_BYTES} bytes")
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            raise BatchRequestError("the upload must be multipart/form-data") from None
        purpose, filename, data = None, None, None
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                filename = part.filename or "upload.jsonl"
                data = await _read_part(part)
        if data is None:
            raise BatchRequestError("file: a file part is required")
        if purpose not in FILE_PURPOSES:
            raise BatchRequestError(f"purpose: must be one of {', '.join(FILE_PURPOSES)}")
        if len(data) > OPENAI_MAX_FILE_BYTES:
            raise BatchRequestError(f"a batch input file holds at most {OPENAI_MAX_FILE_BYTES} bytes")
        assert filename is not None
        return _json(self.store.add_file(filename, purpose, data).wire())

    def _new_record(self, provider: Provider, prefix: str, count: int) -> BatchRecord:
        cfg = self.app.config
        return BatchRecord(
            new_id(prefix), provider, time.time(), count, cfg.batch_delay_s, cfg.batch_expire_after_s
        )

    async def _create_openai(self, request: BaseRequest) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise BatchRequestError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BatchRequestError("the request body must be a JSON object")
        if body.get("endpoint") != OPENAI_ENDPOINT:
            raise BatchRequestError(f"endpoint: the simulator batches only {OPENAI_ENDPOINT}")
        if body.get("completion_window") != "24h":
            raise BatchRequestError("completion_window: must be '24h'")
        metadata = body.get("metadata")
        if metadata is not None and (
            not isinstance(metadata, dict)
            or len(metadata) > 16
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            raise BatchRequestError("metadata: at most 16 string keys with string values")
        file_id = str(body.get("input_file_id") or "")
        stored = self.store.file(file_id)
        data = self.store.file_data(file_id)
        if stored is None or data is None or stored.purpose != "batch":
            raise BatchRequestError(f"input_file_id: no file {file_id!r} uploaded with purpose 'batch'")
        lines, errors = parse_openai_input(data, OPENAI_ENDPOINT)
        record = self._new_record("openai", "batch_", len(lines))
        record.input_file_id, record.metadata = file_id, metadata
        record.errors = errors or None
        self.store.create(record, [] if errors else lines)
        self._count_created(record)
        return _json(openai_batch(record))

    async def _create_anthropic(self, request: BaseRequest) -> web.Response:
        if request.content_length is not None and request.content_length > ANTHROPIC_MAX_BYTES:
            raise BatchRequestError(f"a batch holds at most {ANTHROPIC_MAX_BYTES} bytes")
        raw = await request.content.read()  # not request.read(): its 1 MiB cap is for model calls
        lines = parse_anthropic_requests(raw)
        record = self._new_record("anthropic", "msgbatch_", len(lines))
        self.store.create(record, lines)
        self._count_created(record)
        return _json(anthropic_batch(record, f"{request.scheme}://{request.host}"))

    def _count_created(self, record: BatchRecord) -> None:
        self.app.stats.add("batches_created")
        if not record.errors:
            self.app.stats.add("batch_lines", record.count)

    # --- reading, cancelling ---------------------------------------------------------------------

    def _list(self, provider: Provider, request: BaseRequest) -> web.Response:
        records = self.store.all(provider)
        ids = [r.id for r in records]
        if provider == "openai":
            limit, after, before = _limit(request, 20, 100), request.query.get("after"), None
        else:
            limit = _limit(request, 20, 1000)
            after, before = request.query.get("after_id"), request.query.get("before_id")
        if before is not None:
            stop = ids.index(before) if before in ids else 0
            start = max(0, stop - limit)
            has_more = start > 0
        else:
            start = ids.index(after) + 1 if after in ids else (len(ids) if after else 0)
            stop = start + limit
            has_more = stop < len(ids)
        page = [self.ensure_results(r.id) or r for r in records[start:stop]]
        base = f"{request.scheme}://{request.host}"
        data = [openai_batch(r) if provider == "openai" else anthropic_batch(r, base) for r in page]
        out: dict[str, Any] = {
            "data": data,
            "has_more": has_more,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }
        if provider == "openai":
            out["object"] = "list"
        return _json(out)

    def _cancel(self, provider: Provider, batch_id: str, request: BaseRequest) -> web.Response:
        with self.store.locked(batch_id) as record:
            if record is None or record.provider != provider:
                return self._missing(provider, "batch", batch_id)
            now = time.time()
            cancelling = False
            if not record.errors and record.outcome is None and not record.ended(now):
                record.cancel_at = now
                self.store.save(record)
                self.app.stats.add("batches_cancelled")
                cancelling = True
        if not cancelling:
            record = self.ensure_results(batch_id) or record
        if provider == "openai":
            return _json(openai_batch(record, cancelling=cancelling))
        return self._batch(provider, record, request)

    def _anthropic_results(self, batch_id: str) -> web.Response:
        record = self.ensure_results(batch_id)
        if record is None or record.provider != "anthropic":
            return self._missing("anthropic", "batch", batch_id)
        data = self.store.results(batch_id) if record.outcome is not None else None
        if data is None:
            raise BatchRequestError(f"batch {batch_id} has not ended; its results are not ready")
        return web.Response(body=data, content_type="application/x-jsonl")

    # --- results ---------------------------------------------------------------------------------

    def ensure_results(self, batch_id: str) -> BatchRecord | None:
        """The batch's record, with its results computed if it has ended (once, under its lock)."""
        record = self.store.get(batch_id)
        if record is None or record.outcome is not None or record.errors or not record.ended(time.time()):
            return record
        with self.store.locked(batch_id) as record:
            if record is not None and record.outcome is None and record.ended(time.time()):
                record.outcome = self._compute(record)
                self.store.save(record)
        return record

    def _compute(self, record: BatchRecord) -> dict[str, Any]:
        cfg = self.app.config
        processed = record.processed()
        _end, kind = record.end()
        good: list[bytes] = []  # OpenAI output file / every Anthropic result line
        bad: list[bytes] = []  # OpenAI error file
        succeeded_ids: list[str] = []
        errored = left = 0
        for i, (custom_id, body) in enumerate(self.store.lines(record.id)):
            line_id = f"batch_req_{record.id[-12:]}{i:06x}"
            if i >= processed:
                left += 1
                if record.provider == "openai":
                    bad.append(openai_not_run_line(line_id, custom_id, kind))
                else:
                    good.append(anthropic_result_line(custom_id, None, kind))
                continue
            fail = drawn_error(cfg.seed, record.id, custom_id, cfg.batch_error_rate)
            try:
                answer = answer_line(self.app, record.provider, body, fail=fail)
            except Exception as exc:  # a simulator bug fails the line, not the whole batch
                log.exception("batch %s: line %s could not be answered", record.id, custom_id)
                self.app.stats.add("batch_lines_errored")
                answer = bug_answer(record.provider, f"{type(exc).__name__}: {exc}")
            if answer.ok:
                succeeded_ids.append(custom_id)
            else:
                errored += 1
            if record.provider == "openai":
                (good if answer.ok else bad).append(openai_result_line(line_id, custom_id, answer))
            else:
                good.append(anthropic_result_line(custom_id, answer, kind))
        if kind == "expired":
            self.app.stats.add("batches_expired")
        outcome: dict[str, Any] = {"succeeded": len(succeeded_ids), "errored": errored, "left": left}
        self.store.write_succeeded(record.id, succeeded_ids)
        if record.provider == "openai":
            outcome["output_file_id"] = self._output_file(record.id, "output", good)
            outcome["error_file_id"] = self._output_file(record.id, "error", bad)
        else:
            self.store.write_results(record.id, b"".join(line + b"\n" for line in good))
        return outcome

    def _output_file(self, batch_id: str, what: str, lines: list[bytes]) -> str | None:
        if not lines:
            return None
        data = b"".join(line + b"\n" for line in lines)
        return self.store.add_file(f"{batch_id}_{what}.jsonl", "batch_output", data).id

    def batch_stats(self) -> dict[str, int]:
        """What every batch so far carried (see the module doc); computes ended batches' results."""
        records = sorted(
            [*self.store.all("openai"), *self.store.all("anthropic")], key=lambda r: (r.created, r.id)
        )
        lines = resubmitted = 0
        distinct: set[tuple[str, str]] = set()
        succeeded: set[tuple[str, str]] = set()
        for listed in records:
            record = self.ensure_results(listed.id) or listed
            if record.errors:
                continue
            for custom_id, _body in self.store.lines(record.id):
                key = (record.provider, custom_id)
                lines += 1
                distinct.add(key)
                resubmitted += key in succeeded
            succeeded.update((record.provider, c) for c in self.store.succeeded(record.id))
        return {
            "batches": len(records),
            "lines": lines,
            "distinct_custom_ids": len(distinct),
            "resubmitted_after_success": resubmitted,
        }


async def _read_part(part: BodyPartReader) -> bytes:
    """A file part, in chunks: `part.read()` refuses anything over the request's
    `client_max_size` (1 MiB on the low-level server), far below a batch file's 200 MB."""
    data = bytearray()
    while chunk := await part.read_chunk(1 << 20):
        data += chunk
        if len(data) > OPENAI_MAX_FILE_BYTES:
            raise BatchRequestError(f"a batch input file holds at most {OPENAI_MAX_FILE_BYTES} bytes")
    return bytes(data)
