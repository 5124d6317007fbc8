"""The batch adapters (`services.teachers.batches`) against the simulator, over real HTTP.

Clients are built with `build_client` from specs, as kpdd builds them; the adapters use those
clients' own SDK objects. Nothing is patched.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from services.kpdd.prompts import render_prompt
from services.teachers.base import TeacherClient, TeacherRequest
from services.teachers.batches import (
    AnthropicBatchAPI,
    BatchAPI,
    BatchLimits,
    BatchLine,
    BatchResult,
    OpenAIBatchAPI,
    ProviderBatch,
    batch_api,
)
from services.teachers.errors import TeacherCallError
from services.teachers.simulator import ProblemBank, SimulatorConfig, SimulatorHandle, run_in_thread
from tests.services.teachers.clients_support import (
    FAKE_KEYS,
    EchoServer,
    closed_port_url,
    echo_server,
    fake_keys,
    gsm8k_items,
    key_fragments,
    make_client,
    sim_bank,
    spec_for,
)

__all__ = ["echo_server", "fake_keys", "sim_bank"]  # fixtures used here

pytestmark = pytest.mark.usefixtures("fake_keys")

PROVIDERS = ("openai", "anthropic", "openai-compatible", "sim")
UNKNOWN = "A zorb has 7 blips and gains 3 more. How many blips does the zorb have?"


@pytest.fixture
def start_sim(sim_bank: ProblemBank) -> Iterator[Callable[..., SimulatorHandle]]:
    handles: list[SimulatorHandle] = []

    def start(**config: Any) -> SimulatorHandle:
        config.setdefault("batch_delay_s", 0.2)
        handle = run_in_thread(SimulatorConfig(**config), sim_bank)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.close()


def _requests(n: int, unknown: int = 0) -> list[TeacherRequest]:
    questions = [item.question for item in gsm8k_items(n)] + [f"{UNKNOWN} ({i})" for i in range(unknown)]
    return [TeacherRequest(render_prompt(q, "cot")) for q in questions]


def _lines(client: TeacherClient, requests: list[TeacherRequest]) -> list[BatchLine]:
    return [
        BatchLine(
            hashlib.sha256(r.prompt.messages[-1]["content"].encode()).hexdigest(), client.request_kwargs(r)
        )  # type: ignore[attr-defined]
        for r in requests
    ]


def _ended(api: BatchAPI, batch_id: str, timeout: float = 10.0) -> ProviderBatch:
    deadline = time.monotonic() + timeout
    while True:
        batch = api.retrieve(batch_id)
        if batch.ended or batch.status == "failed":
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)


def _by_id(results: Iterator[BatchResult]) -> dict[str, BatchResult]:
    out: dict[str, BatchResult] = {}
    for result in results:
        assert result.custom_id not in out
        out[result.custom_id] = result
    return out


# --- submit, retrieve, results ------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_batch_answers_equal_the_synchronous_calls(start_sim: Any, provider: str) -> None:
    sim = start_sim()
    with make_client(spec_for(provider, sim)) as client:
        api = batch_api(client)
        assert isinstance(api, AnthropicBatchAPI if provider == "anthropic" else OpenAIBatchAPI)
        requests = _requests(3)
        lines = _lines(client, requests)
        batch_id = api.submit(lines, tag="job1-b1")
        first = api.retrieve(batch_id)
        assert (first.id, first.status, first.total, first.done, first.ended) == (
            batch_id,
            "in_progress",
            3,
            0,
            False,
        )
        batch = _ended(api, batch_id)
        assert (batch.status, batch.total, batch.done, batch.failed, batch.message) == (
            "ended",
            3,
            3,
            0,
            None,
        )
        results = _by_id(api.results(batch_id))
        online = [client.call(r) for r in requests]
    assert set(results) == {line.custom_id for line in lines}
    for line, call in zip(lines, online, strict=True):
        result = results[line.custom_id]
        assert result.outcome == "succeeded" and result.error is None and result.response is not None
        assert call.response is not None
        got, want = result.response, call.response
        assert (got.text, got.finish_reason, got.tokens_in, got.tokens_out) == (
            want.text,
            want.finish_reason,
            want.tokens_in,
            want.tokens_out,
        )
        assert got.tokens_in and got.tokens_out and got.finish_reason == "stop"
        assert result.raw["custom_id"] == line.custom_id
    stats = sim.stats
    assert stats["batch_lines"] == stats["batch_lines_answered"] == 3


def test_openai_upload_is_named_by_tag_and_sized_as_line_bytes(start_sim: Any) -> None:
    sim = start_sim()
    with make_client(spec_for("openai", sim)) as client:
        api = batch_api(client)
        lines = _lines(client, _requests(4))
        batch_id = api.submit(lines, tag="job7-b3")
        sdk: Any = client._sdk  # type: ignore[attr-defined]
        batch = sdk.batches.retrieve(batch_id)
        uploaded = sdk.files.retrieve(batch.input_file_id)
    assert batch.metadata == {"kpdd_batch": "job7-b3"} and batch.endpoint == "/v1/chat/completions"
    assert uploaded.filename == "kpdd-job7-b3.jsonl" and uploaded.purpose == "batch"
    assert uploaded.bytes == sum(api.line_bytes(line) for line in lines)


# --- recovery ---------------------------------------------------------------------------------------


def test_openai_find_recognises_the_tag(start_sim: Any) -> None:
    sim = start_sim()
    with make_client(spec_for("openai", sim)) as client:
        api = batch_api(client)
        lines = _lines(client, _requests(2))
        started = time.time()
        wanted = api.submit(lines, tag="job1-b1")
        for i in range(3):  # newer batches, so the search pages past them
            api.submit(lines, tag=f"job1-b{i + 2}")
        assert api.find("job1-b1", started, 2) == wanted
        assert api.find("job1-b9", started, 2) is None
        assert api.find("job1-b1", time.time() + 5, 2) is None  # created before the window


def test_anthropic_find_recognises_time_and_size(start_sim: Any) -> None:
    sim = start_sim()
    with make_client(spec_for("anthropic", sim)) as client:
        api = batch_api(client)
        before = time.time()
        older = api.submit(_lines(client, _requests(3)), tag="a")
        after_older = time.time()
        time.sleep(0.01)
        wanted = api.submit(_lines(client, _requests(3)), tag="b")
        api.submit(_lines(client, _requests(2)), tag="c")
        assert api.find("b", after_older, 3) == wanted  # the newest of 3 requests in the window
        assert api.find("a", before, 3) == wanted  # the documented limit: same size, same window
        assert older != wanted
        assert api.find("x", before, 5) is None


# --- per-request failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_errored_lines_are_classified(start_sim: Any, provider: str) -> None:
    sim = start_sim(batch_error_rate=0.5, seed=3)
    with make_client(spec_for(provider, sim)) as client:
        api = batch_api(client)
        lines = _lines(client, _requests(10, unknown=2))
        batch_id = api.submit(lines, tag="t")
        batch = _ended(api, batch_id)
        results = _by_id(api.results(batch_id))
    assert len(results) == 12 and batch.total == 12 and batch.done == 12
    errored = [r for r in results.values() if r.outcome == "errored"]
    assert batch.failed == len(errored)
    server = [r for r in errored if r.error is not None and r.error.kind == "server"]
    refused = [r for r in errored if r.error is not None and r.error.kind == "bad_request"]
    assert len(server) + len(refused) == len(errored) and server
    assert all(r.error is not None and r.error.retryable and r.error.status_code == 500 for r in server)
    assert all(
        r.error is not None and not r.error.retryable and r.error.status_code in (422, 400) for r in refused
    )
    unknown_ids = {line.custom_id for line in lines[10:]}
    # an unknown problem is refused (422) unless the drawn server error came first
    assert {r.custom_id for r in refused} <= unknown_ids
    assert all(r.response is None for r in errored)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_expired_requests_are_retryable_outcomes(start_sim: Any, provider: str) -> None:
    sim = start_sim(batch_delay_s=1.0, batch_expire_after_s=0.5)
    with make_client(spec_for(provider, sim)) as client:
        api = batch_api(client)
        lines = _lines(client, _requests(6))
        batch_id = api.submit(lines, tag="t")
        batch = _ended(api, batch_id)
        results = _by_id(api.results(batch_id))
    assert batch.status == "expired" and batch.ended and batch.done == 3
    outcomes = [results[line.custom_id].outcome for line in lines]
    assert outcomes == ["succeeded"] * 3 + ["expired"] * 3
    for line in lines[3:]:
        error = results[line.custom_id].error
        assert error is not None and error.kind == "expired" and error.retryable


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_cancel_then_results_are_cancelled_outcomes(start_sim: Any, provider: str) -> None:
    sim = start_sim(batch_delay_s=30.0)
    with make_client(spec_for(provider, sim)) as client:
        api = batch_api(client)
        lines = _lines(client, _requests(4))
        batch_id = api.submit(lines, tag="t")
        cancelling = api.cancel(batch_id)
        assert cancelling.status == "cancelling" and not cancelling.ended
        batch = _ended(api, batch_id)
        results = _by_id(api.results(batch_id))
    assert batch.status == "cancelled" and batch.ended and batch.total == 4
    assert {r.outcome for r in results.values()} == {"cancelled"}
    assert all(
        r.error is not None and r.error.kind == "cancelled" and r.error.retryable for r in results.values()
    )


def test_failed_openai_batch_carries_the_reason(start_sim: Any) -> None:
    sim = start_sim()
    with make_client(spec_for("openai", sim)) as client:
        api = batch_api(client)
        line = _lines(client, _requests(1))[0]
        batch = _ended(api, api.submit([line, line], tag="dup"))  # the same custom_id twice
    assert batch.status == "failed" and not batch.ended
    assert batch.message is not None and "line 2" in batch.message and "duplicate" in batch.message


# --- limits and errors ---------------------------------------------------------------------------------


class _TinyOpenAI(OpenAIBatchAPI):
    limits: ClassVar[BatchLimits] = BatchLimits(max_requests=3, max_bytes=5000)


def test_limits_are_checked_before_anything_is_sent(start_sim: Any) -> None:
    sim = start_sim()
    with make_client(spec_for("openai", sim)) as client:
        tiny = _TinyOpenAI(client)
        lines = _lines(client, _requests(4))
        with pytest.raises(ValueError, match="4 requests exceed the 3"):
            tiny.submit(lines, tag="t")
        assert all(tiny.line_bytes(line) > 2000 for line in lines[:3])
        with pytest.raises(ValueError, match="bytes exceed the 5000"):
            tiny.submit(lines[:3], tag="t")
        with pytest.raises(ValueError, match="at least one"):
            tiny.submit([], tag="t")
        big = [BatchLine(f"{i:064x}", {"model": "m"}) for i in range(50_001)]
        with pytest.raises(ValueError, match="50001 requests exceed the 50000"):
            batch_api(client).submit(big, tag="t")
    assert OpenAIBatchAPI.limits == BatchLimits(50_000, 200 * 1024 * 1024)
    assert AnthropicBatchAPI.limits == BatchLimits(100_000, 256 * 1024 * 1024)
    assert sim.stats["batches_created"] == 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_the_key_never_reaches_an_error_message(echo_server: EchoServer, provider: str) -> None:
    url = echo_server.url if provider == "anthropic" else f"{echo_server.url}/v1"
    with make_client(f"{provider}:model@{url}") as client:
        api = batch_api(client)
        line = BatchLine("a" * 64, {"model": "model", "messages": [{"role": "user", "content": "hi"}]})
        with pytest.raises(TeacherCallError) as exc_info:
            api.submit([line], tag="t")
    error = exc_info.value
    assert error.kind == "auth" and not error.retryable
    assert echo_server.seen and echo_server.seen[0] in FAKE_KEYS  # the key was sent, and echoed back
    shown = f"{error} {error.message} {error.body} {error!r} {error.__cause__!r} {error.__context__!r}"
    for key in FAKE_KEYS:
        for fragment in key_fragments(key):
            assert fragment not in shown


def test_transport_errors_and_unknown_batches_are_teacher_errors(start_sim: Any) -> None:
    with (
        make_client(f"openai:gpt-4o-mini@{closed_port_url()}") as client,
        pytest.raises(TeacherCallError) as exc,
    ):
        batch_api(client).retrieve("batch_x")
    assert exc.value.kind == "connection" and exc.value.retryable
    sim = start_sim()
    for provider in ("openai", "anthropic"):
        with make_client(spec_for(provider, sim)) as client, pytest.raises(TeacherCallError) as exc:
            batch_api(client).retrieve("batch_nope")
        assert exc.value.kind == "bad_request" and exc.value.status_code == 404


def test_response_from_body_rejects_what_is_not_a_response(start_sim: Any) -> None:
    sim = start_sim()
    for provider in ("openai", "anthropic"):
        with make_client(spec_for(provider, sim)) as client:
            for junk in ([], {"id": "x"}):
                with pytest.raises(TeacherCallError) as exc:
                    client.response_from_body(junk)  # type: ignore[attr-defined]
                assert exc.value.kind == "bad_response"
