"""The request handler: auth, wire parsing, prompt reading, limits, faults, latency, answer.

One `SimulatorApp` per worker process (or per thread handle); it is not thread-safe and relies on
running in one event loop. Endpoints:

- `POST /v1/chat/completions` (OpenAI; SDK `base_url=<url>/v1`), auth `Authorization: Bearer <any
  non-empty key>`;
- `POST /v1/messages` (Anthropic; SDK `base_url=<url>`), auth `x-api-key: <any non-empty key>`
  (or `Authorization: Bearer`);
- `GET /v1/models` (OpenAI-style list holding one model, `gold`), `GET /_sim/health` (status,
  worker index, pid), `GET /_sim/stats` (the counters of `stats.COUNTERS`, summed over workers),
  `POST /_sim/reset` (zero the counters, the limits and the attempt numbers of this worker, and
  forget every batch and file);
- the batch APIs (`batches`): OpenAI `POST /v1/files`, `GET /v1/files/{id}[/content]`,
  `POST /v1/batches`, `GET /v1/batches[/{id}]`, `POST /v1/batches/{id}/cancel`; Anthropic
  `POST /v1/messages/batches`, `GET /v1/messages/batches[/{id}]`,
  `POST /v1/messages/batches/{id}/cancel`, `GET /v1/messages/batches/{id}/results`; and
  `GET /_sim/batch-stats` (lines received, distinct custom_ids, resubmissions after success).

Per model request, in order: 401 without a key (the key is never logged or echoed); 400 for a
body the provider would reject; the problem is read from the prompt and its rationale looked
up, and a problem the simulator does not know (or knows without a gold answer) is refused with
422 (`unknown_problem`: a permanent error for the clients; the simulator never invents an
answer); the rate limits (429 + `Retry-After`/`retry-after-ms`); the fault (forced or drawn, see
`faults`); the latency; the answer, cut at the request's `max_tokens` if longer (finish
`length`).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import time
from dataclasses import dataclass

import orjson
from aiohttp import web
from aiohttp.web_request import BaseRequest

from services.kpdd.prompts import read_prompt
from services.kpdd.records import Mode, Stage
from services.teachers.simulator.answers import SimText, answer_text
from services.teachers.simulator.bank import ProblemBank, question_key
from services.teachers.simulator.batches import SimBatches
from services.teachers.simulator.config import SimulatorConfig
from services.teachers.simulator.faults import (
    CONTENT_FAULTS,
    FAULT_HEADER,
    HTTP_FAULTS,
    FaultKind,
    decide_fault,
    fingerprint,
    parse_forced,
    split_model,
)
from services.teachers.simulator.ratelimit import LimitResult, RateLimiter
from services.teachers.simulator.rationale import SimRationale
from services.teachers.simulator.stats import Stats
from services.teachers.simulator.wire import (
    ChatRequest,
    Choice,
    Provider,
    WireError,
    anthropic_body,
    error_body,
    estimate_tokens,
    openai_body,
    parse_anthropic,
    parse_openai,
)

MAX_TRACKED_FINGERPRINTS = 1_000_000  # attempt numbers are forgotten (all at once) past this
MAX_CACHED_ANSWERS = 100_000
UNKNOWN_PROBLEM_STATUS = 422
HANG_POLL_S = 0.1
_JSON = "application/json"


@dataclass(slots=True, frozen=True)
class _Reading:
    """What a prompt asks: the problem's rationale (None: the simulator cannot answer it), the
    mode and stage, and whether the prompt is a KPDD prompt."""

    question: str
    rationale: SimRationale | None
    mode: Mode
    stage: Stage
    kpdd: bool
    known: bool  # the question is in the bank (perhaps without a gold answer)


def refusal_message(reading: _Reading) -> str:
    """Why the simulator will not answer, and how to start one that does."""
    fix = (
        "start the simulator with --corpus FORMAT:PATH (or --from-db) holding the problem; the "
        "embedded simulator of `sim:` teachers knows the problems of the kpdd database"
    )
    if reading.known:
        return (
            "the teacher simulator knows this problem but not its answer (no gold answer), and it "
            f"never invents one; {fix} with its gold"
        )
    if not reading.kpdd:
        return (
            "the teacher simulator answers KPDD prompts (a user message starting with 'Problem:') "
            f"about problems it knows, and this request is neither; {fix}"
        )
    return (
        f"the teacher simulator does not know this problem (question sha256 "
        f"{question_key(reading.question)[:12]}), and it never invents an answer; {fix}"
    )


class SimulatorApp:
    def __init__(self, config: SimulatorConfig, bank: ProblemBank, stats: Stats, worker: int = 0) -> None:
        self.config = config
        self.bank = bank
        self.stats = stats
        self.worker = worker
        share = 1.0 / config.workers
        self.limiter = RateLimiter(config.rpm * share, config.tpm * share)
        self.rng = random.Random(config.seed * 1_000_003 + worker)
        self.attempts: dict[bytes, int] = {}
        self._readings: dict[tuple[str, str], _Reading] = {}
        self._answers: dict[tuple[str, str, FaultKind | None], SimText] = {}
        self._random_faults = config.faults.any
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid() & 0xFFFFFF:06x}{random.getrandbits(24):06x}"
        self.batches = SimBatches(self, config.batch_dir)

    # --- routing ---------------------------------------------------------------------------------

    async def handle(self, request: BaseRequest) -> web.StreamResponse:
        path, method = request.path, request.method
        if method == "POST" and path == "/v1/chat/completions":
            return await self._model_call("openai", request)
        if method == "POST" and path == "/v1/messages":
            return await self._model_call("anthropic", request)
        if SimBatches.serves(path):
            return await self.batches.handle(request)
        if method == "GET" and path == "/_sim/stats":
            return web.Response(body=orjson.dumps(self.stats.snapshot()), content_type=_JSON)
        if method == "GET" and path == "/_sim/health":
            health = {"status": "ok", "worker": self.worker, "pid": os.getpid()}
            return web.Response(body=orjson.dumps(health), content_type=_JSON)
        if method == "POST" and path == "/_sim/reset":
            self.reset()
            return web.Response(body=b'{"status":"reset"}', content_type=_JSON)
        if method == "GET" and path == "/v1/models":
            models = {
                "object": "list",
                "data": [{"id": "gold", "object": "model", "created": 0, "owned_by": "kpdd-sim"}],
            }
            return web.Response(body=orjson.dumps(models), content_type=_JSON)
        self.stats.add("not_found")
        provider: Provider = "anthropic" if path.startswith("/v1/messages") else "openai"
        status = 405 if path in ("/v1/chat/completions", "/v1/messages") else 404
        return self._error(provider, status, f"{method} {path} is not served by the teacher simulator")

    def reset(self) -> None:
        self.stats.reset()
        self.limiter.reset()
        self.attempts.clear()
        self.batches.reset()

    # --- one model call --------------------------------------------------------------------------

    def _next_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    def _error(
        self,
        provider: Provider,
        status: int,
        message: str,
        *,
        limit: str = "",
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        request_id = f"req_sim{self._next_id()}"
        out = {"x-request-id" if provider == "openai" else "request-id": request_id}
        if headers:
            out.update(headers)
        body = error_body(provider, status, message, request_id, limit=limit)
        return web.Response(status=status, body=body, content_type=_JSON, headers=out)

    @staticmethod
    def _has_key(provider: Provider, request: BaseRequest) -> bool:
        auth = request.headers.get("Authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if provider == "anthropic":
            return bool(request.headers.get("x-api-key", "").strip() or bearer)
        return bool(bearer)

    def _attempt(self, fp: bytes) -> int:
        attempt = self.attempts.get(fp, 0)
        if len(self.attempts) >= MAX_TRACKED_FINGERPRINTS:
            self.attempts.clear()
        self.attempts[fp] = attempt + 1
        return attempt

    async def _hang(self, request: BaseRequest) -> None:
        """Wait until the client gives up (its connection closes) or `hang_max_s` passes. Polled,
        because cancelling every handler on disconnect would cost every request time."""
        deadline = time.monotonic() + self.config.hang_max_s
        while time.monotonic() < deadline:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            await asyncio.sleep(min(HANG_POLL_S, max(0.0, deadline - time.monotonic())))

    def _latency_s(self, completion_tokens: int) -> float:
        cfg = self.config
        mean, jitter = cfg.latency_ms, cfg.latency_jitter_ms
        if jitter <= 0 or cfg.latency_dist == "fixed":
            ms = mean
        elif cfg.latency_dist == "uniform":
            ms = self.rng.uniform(mean - jitter, mean + jitter)
        elif cfg.latency_dist == "normal":
            ms = self.rng.gauss(mean, jitter)
        elif mean > 0:  # lognormal with the given mean and standard deviation
            sigma2 = math.log1p((jitter / mean) ** 2)
            ms = self.rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))
        else:
            ms = 0.0
        return (max(0.0, ms) + cfg.ms_per_output_token * completion_tokens) / 1000.0

    def _limit_headers(self, provider: Provider, result: LimitResult) -> dict[str, str]:
        headers: dict[str, str] = {}
        if provider == "openai":
            if self.limiter.rpm and result.remaining_requests is not None:
                headers["x-ratelimit-limit-requests"] = str(int(self.limiter.rpm))
                headers["x-ratelimit-remaining-requests"] = str(result.remaining_requests)
            if self.limiter.tpm and result.remaining_tokens is not None:
                headers["x-ratelimit-limit-tokens"] = str(int(self.limiter.tpm))
                headers["x-ratelimit-remaining-tokens"] = str(result.remaining_tokens)
        else:
            if self.limiter.rpm and result.remaining_requests is not None:
                headers["anthropic-ratelimit-requests-limit"] = str(int(self.limiter.rpm))
                headers["anthropic-ratelimit-requests-remaining"] = str(result.remaining_requests)
            if self.limiter.tpm and result.remaining_tokens is not None:
                headers["anthropic-ratelimit-tokens-limit"] = str(int(self.limiter.tpm))
                headers["anthropic-ratelimit-tokens-remaining"] = str(result.remaining_tokens)
        return headers

    def _read(self, chat: ChatRequest) -> _Reading:
        """The problem, mode and stage this prompt asks about, cached by prompt (a benchmark or a
        retry asks the same prompts again and again)."""
        key = (chat.system, chat.last_user)
        cached = self._readings.get(key)
        if cached is not None:
            return cached
        reading = read_prompt(chat.system, chat.last_user)
        mode: Mode
        stage: Stage
        if reading is None:  # not a KPDD prompt: answered only if the whole text is a known question
            question, mode, stage = chat.last_user, "cot", "all"
        else:
            question, mode, stage = reading.question, reading.mode, reading.stage
        out = _Reading(
            question,
            self.bank.rationale_for(question),
            mode,
            stage,
            reading is not None,
            self.bank.knows(question),
        )
        if len(self._readings) >= MAX_CACHED_ANSWERS:
            self._readings.clear()
        self._readings[key] = out
        return out

    def _answer(self, chat: ChatRequest, reading: _Reading, kind: FaultKind | None) -> SimText:
        """The answer text for this prompt under a content fault, cached by (prompt, fault)."""
        key = (chat.system, chat.last_user, kind)
        cached = self._answers.get(key)
        if cached is not None:
            return cached
        assert reading.rationale is not None, "unknown problems are refused before answering"
        answer = answer_text(reading.rationale, reading.mode, reading.stage, kind)
        if len(self._answers) >= MAX_CACHED_ANSWERS:
            self._answers.clear()
        self._answers[key] = answer
        return answer

    def _choices(
        self,
        chat: ChatRequest,
        reading: _Reading,
        fault: FaultKind | None,
        forced: bool,
        fp: bytes,
        attempt: int,
    ) -> tuple[list[Choice], list[str]]:
        """The choices to send, and the counters to add once they are sent."""
        rates = self.config.faults
        choices: list[Choice] = []
        counters: list[str] = []
        for index in range(chat.n):
            kind: FaultKind | None = fault
            if fault in HTTP_FAULTS:
                kind = None  # the request fails as a whole; no choice is sent
            elif index > 0 and not forced:
                kind = (
                    decide_fault(self.config.seed, fp, attempt, rates, index) if self._random_faults else None
                )
            if kind not in CONTENT_FAULTS:
                kind = None
            elif kind is not None:
                counters.append(f"fault_{kind}")
            answer = self._answer(chat, reading, kind)
            if index == 0 and not reading.kpdd:
                counters.append("not_kpdd_prompt")
            text, finish = answer.text, answer.finish
            if chat.max_tokens is not None and estimate_tokens(len(text)) > chat.max_tokens:
                text, finish = text[: chat.max_tokens * 4], "length"
                counters.append("length_limited")
            choices.append(Choice(text, finish, max(1, estimate_tokens(len(text)))))
        return choices, counters

    async def _model_call(self, provider: Provider, request: BaseRequest) -> web.StreamResponse:
        stats = self.stats
        stats.add("requests")
        stats.add(provider)
        if not self._has_key(provider, request):
            stats.add("auth_failed")
            where = "the Authorization header (Bearer)" if provider == "openai" else "the x-api-key header"
            return self._error(provider, 401, f"no API key provided; send any non-empty key in {where}")
        raw = await request.read()
        try:
            chat = parse_openai(raw) if provider == "openai" else parse_anthropic(raw)
            base_model, suffix = split_model(chat.model)
            spec = request.headers.get(FAULT_HEADER) or suffix
            forced = parse_forced(spec) if spec else None
        except (WireError, ValueError) as exc:
            stats.add("bad_request")
            return self._error(provider, 400, str(exc))
        reading = self._read(chat)
        if reading.rationale is None:
            stats.add("unknown_question")
            if not reading.kpdd:
                stats.add("not_kpdd_prompt")
            return self._error(provider, UNKNOWN_PROBLEM_STATUS, refusal_message(reading))

        fault: FaultKind | None = None
        fp, attempt = b"", 0
        if forced is not None or self._random_faults:  # attempts matter only for faults
            fp = fingerprint(raw)
            attempt = self._attempt(fp)
            if forced is not None:
                fault = forced.kind if forced.applies(attempt) else None
            else:
                fault = decide_fault(self.config.seed, fp, attempt, self.config.faults)

        choices, counters = self._choices(chat, reading, fault, forced is not None, fp, attempt)
        prompt_tokens = estimate_tokens(chat.prompt_chars) + 4 * chat.message_count
        completion_tokens = sum(c.completion_tokens for c in choices)

        limit = self.limiter.take(base_model, prompt_tokens + completion_tokens)
        limit_headers = self._limit_headers(provider, limit) if self.limiter.enabled else {}
        if not limit.allowed:
            if limit.too_large:
                stats.add("too_large")
                return self._error(
                    provider,
                    400,
                    f"request too large for {base_model}: {prompt_tokens + completion_tokens} tokens "
                    f"exceed the limit of {int(self.limiter.tpm)} tokens per minute",
                )
            stats.add("rate_limited")
            wait = limit.retry_after_s
            limit_headers["retry-after"] = str(max(1, math.ceil(wait)))
            limit_headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
            return self._error(
                provider,
                429,
                f"rate limit reached for {base_model}: {limit.metric} per minute; try again in {wait:.3f}s",
                limit=limit.metric,
                headers=limit_headers,
            )

        if fault == "429":
            stats.add("fault_429")
            wait = self.config.fault_retry_after_s
            retry = {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
            return self._error(provider, 429, "simulated rate limit", limit="requests", headers=retry)
        if fault == "500":
            stats.add("fault_500")
            return self._error(
                provider, 500, "The server had an error while processing your request (simulated)."
            )
        if fault == "hang":
            stats.add("fault_hang")
            stats.add("hanging")
            try:
                await self._hang(request)
            finally:
                stats.add("hanging", -1)
            return self._error(provider, 504, "simulated hang ended without an answer")

        delay = self._latency_s(completion_tokens)
        if delay > 0:
            await asyncio.sleep(delay)

        stats.add("answered")
        for name in counters:
            stats.add(name)
        stats.add("prompt_tokens", prompt_tokens)
        stats.add("completion_tokens", completion_tokens)
        response_id = self._next_id()
        if provider == "openai":
            body = openai_body(
                f"chatcmpl-sim{response_id}", int(time.time()), base_model, choices, prompt_tokens
            )
            limit_headers["x-request-id"] = f"req_sim{response_id}"
        else:
            body = anthropic_body(f"msg_sim{response_id}", base_model, choices[0], prompt_tokens)
            limit_headers["request-id"] = f"req_sim{response_id}"
        return web.Response(body=body, content_type=_JSON, headers=limit_headers)
