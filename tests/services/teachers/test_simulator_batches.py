"""The simulator's batch endpoints through the official openai and anthropic SDKs, over HTTP.

No SDK is patched: the OpenAI Files + Batch and Anthropic Message Batches resources of the real
clients talk to a simulator in a thread (or, for the shared-state test, two worker processes).
"""

from __future__ import annotations

import argparse
import io
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from services.cli.teacher_sim_cmd import add_arguments, config_from_args
from services.errors import BadInputError
from services.kpdd.prompts import render_prompt
from services.teachers.simulator import SimulatorConfig, SimulatorHandle, run_in_thread, spawn_simulator
from services.teachers.simulator.batch_answers import drawn_error
from tests.services.teachers.simulator_helpers import (
    GSM8K_TRAIN,
    anthropic_client,
    call,
    gsm8k_bank,
    openai_client,
)

PROMPT = render_prompt(
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "cot",
)
UNKNOWN = render_prompt("A zorb has 7 blips and gains 3 more. How many blips does the zorb have?", "cot")


def _questions(n: int) -> list[str]:
    lines = GSM8K_TRAIN.read_bytes().splitlines()
    return [orjson.loads(lines[i])["question"] for i in range(n)]


@pytest.fixture
def sim_factory() -> Iterator[Callable[..., SimulatorHandle]]:
    handles: list[SimulatorHandle] = []

    def start(**config: Any) -> SimulatorHandle:
        config.setdefault("batch_delay_s", 0.2)
        handle = run_in_thread(SimulatorConfig(**config), bank=gsm8k_bank())
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.close()


def _openai_body(prompt: Any = PROMPT, model: str = "gold") -> dict[str, Any]:
    return {"model": model, "messages": prompt.openai_messages(), "max_completion_tokens": 2000}


def _anthropic_params(prompt: Any = PROMPT, model: str = "gold") -> dict[str, Any]:
    return {"model": model, "max_tokens": 2000, "system": prompt.system, "messages": prompt.messages}


def _upload(client: openai.OpenAI, lines: list[tuple[str, dict[str, Any]]]) -> str:
    data = b"".join(
        orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body})
        + b"\n"
        for cid, body in lines
    )
    return client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id


def _openai_batch(client: openai.OpenAI, lines: list[tuple[str, dict[str, Any]]], **kw: Any) -> Any:
    return client.batches.create(
        input_file_id=_upload(client, lines),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        **kw,
    )


def _wait(get: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"still not done: {value}"
        time.sleep(0.05)


def _openai_done(client: openai.OpenAI, batch_id: str) -> Any:
    ended = {"completed", "expired", "cancelled", "failed"}
    return _wait(lambda: client.batches.retrieve(batch_id), lambda b: b.status in ended)


def _anthropic_done(client: anthropic.Anthropic, batch_id: str) -> Any:
    return _wait(lambda: client.messages.batches.retrieve(batch_id), lambda b: b.processing_status == "ended")


def _file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(line) for line in client.files.content(file_id).read().splitlines()]


def _stats(sim: Any) -> dict[str, int]:
    return httpx.get(f"{sim.url}/_sim/batch-stats").json()  # type: ignore[no-any-return]


# --- create, poll, results ---------------------------------------------------------------------------


def test_openai_batch_answers_each_line_as_the_synchronous_endpoint(sim_factory: Any) -> None:
    sim = sim_factory()
    with openai_client(sim.url) as client:
        sync_text, sync_finish = call(client, PROMPT)
        sync = client.chat.completions.create(**_openai_body())  # type: ignore[call-overload]
        lines = [(f"ok-{i}", _openai_body()) for i in range(3)] + [("unknown", _openai_body(UNKNOWN))]
        created = _openai_batch(client, lines, metadata={"kpdd_batch": "t1"})
        assert created.status == "in_progress" and created.metadata == {"kpdd_batch": "t1"}
        assert created.request_counts is not None and created.request_counts.total == 4
        assert created.output_file_id is None and created.completed_at is None

        batch = _openai_done(client, created.id)
        assert batch.status == "completed" and batch.completed_at is not None
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 1)
        out = _file_lines(client, batch.output_file_id)
        errors = _file_lines(client, batch.error_file_id)
        assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"  # type: ignore[arg-type]

    assert sorted(line["custom_id"] for line in out) == ["ok-0", "ok-1", "ok-2"]
    for line in out:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        choice = body["choices"][0]
        assert choice["message"]["content"] == sync_text and choice["finish_reason"] == "stop"
        assert sync_finish == "stop"
        assert body["usage"] == sync.usage.model_dump(exclude_unset=True)  # type: ignore[union-attr]
    [error] = errors
    assert error["custom_id"] == "unknown" and error["response"]["status_code"] == 422
    assert "does not know this problem" in error["response"]["body"]["error"]["message"]
    stats = sim.stats
    assert stats["batches_created"] == 1 and stats["batch_lines"] == 4
    assert stats["batch_lines_answered"] == 3 and stats["batch_lines_errored"] == 1
    assert stats["requests"] == 2  # the two synchronous calls; batch lines are counted apart


def test_an_openai_batch_file_of_several_megabytes_is_accepted(sim_factory: Any) -> None:
    """A real batch file is megabytes (10,000 KPDD requests are about 35 MB): more than the
    server's default 1 MiB body limit."""
    sim = sim_factory()
    with openai_client(sim.url) as client:
        lines = [(f"big-{i}", _openai_body()) for i in range(3000)]
        created = _openai_batch(client, lines)
        batch = _openai_done(client, created.id)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None and batch.request_counts.completed == 3000
    assert _stats(sim)["lines"] == 3000


def test_anthropic_batch_results_stream_through_the_sdk(sim_factory: Any) -> None:
    sim = sim_factory()
    with anthropic_client(sim.url) as client:
        sync_text, _ = call(client, PROMPT)
        requests = [{"custom_id": f"r{i}", "params": _anthropic_params()} for i in range(3)]
        requests.append({"custom_id": "bad", "params": {"model": "gold", "messages": []}})
        created = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        assert created.processing_status == "in_progress" and created.results_url is None
        assert created.request_counts.processing == 4
        batch = _anthropic_done(client, created.id)
        assert batch.results_url == f"{sim.url}/v1/messages/batches/{batch.id}/results"
        assert batch.ended_at is not None and batch.ended_at >= batch.created_at
        counts = batch.request_counts
        assert (counts.processing, counts.succeeded, counts.errored) == (0, 3, 1)
        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert set(results) == {"r0", "r1", "r2", "bad"}
    for cid in ("r0", "r1", "r2"):
        result = results[cid]
        assert result.type == "succeeded"
        assert "".join(b.text for b in result.message.content if b.type == "text") == sync_text
        assert result.message.stop_reason == "end_turn" and result.message.usage.output_tokens > 10
    bad = results["bad"]
    assert bad.type == "errored" and bad.error.error.type == "invalid_request_error"


# --- failures, expiry, cancellation ------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_error_rate_fails_the_drawn_lines_and_a_resubmission_mostly_succeeds(
    sim_factory: Any, provider: str
) -> None:
    sim = sim_factory(batch_error_rate=0.3, seed=7)
    ids = [f"req-{i:03d}" for i in range(40)]

    def run(custom_ids: list[str]) -> tuple[str, set[str], set[str]]:
        """One batch: its id, the ids answered, and the ids failed with a 5xx."""
        if provider == "openai":
            with openai_client(sim.url) as client:
                batch = _openai_batch(client, [(c, _openai_body()) for c in custom_ids])
                batch = _openai_done(client, batch.id)
                ok = {line["custom_id"] for line in _file_lines(client, batch.output_file_id)}
                err = _file_lines(client, batch.error_file_id)
                assert all(line["response"]["status_code"] == 500 for line in err)
                return batch.id, ok, {line["custom_id"] for line in err}
        with anthropic_client(sim.url) as an:
            requests = [{"custom_id": c, "params": _anthropic_params()} for c in custom_ids]
            batch = _anthropic_done(an, an.messages.batches.create(requests=requests).id)  # type: ignore[arg-type]
            results = list(an.messages.batches.results(batch.id))
            failed = {r.custom_id for r in results if r.result.type == "errored"}
            assert all(
                r.result.error.error.type == "api_error" for r in results if r.result.type == "errored"
            )
            return batch.id, {r.custom_id for r in results if r.result.type == "succeeded"}, failed

    first_id, ok, failed = run(ids)
    expected = {c for c in ids if drawn_error(7, first_id, c, 0.3)}
    assert failed == expected and 3 <= len(failed) <= 25  # the draw is the documented pure function
    assert ok == set(ids) - failed
    second_id, ok2, failed2 = run(sorted(failed))  # only the failed ones go again
    assert failed2 == {c for c in failed if drawn_error(7, second_id, c, 0.3)}
    assert ok2 == failed - failed2  # a new batch id draws anew: most go through
    stats = _stats(sim)
    assert stats == {
        "batches": 2,
        "lines": 40 + len(failed),
        "distinct_custom_ids": 40,
        "resubmitted_after_success": 0,
    }
    run(["req-000", "req-001"])  # sent again although answered: the stats show it
    again = {"req-000", "req-001"} & (ok | ok2)
    assert _stats(sim)["resubmitted_after_success"] == len(again) > 0


def test_expiry_answers_the_first_share_and_expires_the_rest(sim_factory: Any) -> None:
    sim = sim_factory(batch_delay_s=1.0, batch_expire_after_s=0.4)
    with openai_client(sim.url) as client:
        batch = _openai_done(client, _openai_batch(client, [(f"e{i}", _openai_body()) for i in range(10)]).id)
        assert batch.status == "expired" and batch.expired_at is not None
        assert batch.request_counts is not None and batch.request_counts.completed == 4
        assert [line["custom_id"] for line in _file_lines(client, batch.output_file_id)] == [
            f"e{i}" for i in range(4)
        ]
        errors = _file_lines(client, batch.error_file_id)
    assert [e["custom_id"] for e in errors] == [f"e{i}" for i in range(4, 10)]
    assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in errors)
    with anthropic_client(sim.url) as an:
        requests = [{"custom_id": f"e{i}", "params": _anthropic_params()} for i in range(10)]
        mb = _anthropic_done(an, an.messages.batches.create(requests=requests).id)  # type: ignore[arg-type]
        assert (mb.request_counts.succeeded, mb.request_counts.expired) == (4, 6)
        types = {r.custom_id: r.result.type for r in an.messages.batches.results(mb.id)}
    assert [types[f"e{i}"] for i in range(10)] == ["succeeded"] * 4 + ["expired"] * 6
    assert sim.stats["batches_expired"] == 2


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_cancel_answers_what_was_processed_and_cancels_the_rest(sim_factory: Any, provider: str) -> None:
    sim = sim_factory(batch_delay_s=2.0)
    n = 20
    if provider == "openai":
        with openai_client(sim.url) as client:
            before = time.time()
            batch = _openai_batch(client, [(f"c{i}", _openai_body()) for i in range(n)])
            after = time.time()
            time.sleep(0.5)
            cancel_before = time.time()
            cancelled = client.batches.cancel(batch.id)
            cancel_after = time.time()
            assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
            final = _openai_done(client, batch.id)
            assert final.status == "cancelled" and final.cancelled_at is not None
            answered = [line["custom_id"] for line in _file_lines(client, final.output_file_id)]
            errors = _file_lines(client, final.error_file_id)
            assert all(e["error"]["code"] == "batch_cancelled" for e in errors)
            left = [e["custom_id"] for e in errors]
            assert client.batches.cancel(batch.id).status == "cancelled"  # again: unchanged
    else:
        with anthropic_client(sim.url) as an:
            requests = [{"custom_id": f"c{i}", "params": _anthropic_params()} for i in range(n)]
            before = time.time()
            mb = an.messages.batches.create(requests=requests)  # type: ignore[arg-type]
            after = time.time()
            time.sleep(0.5)
            cancel_before = time.time()
            cancelled = an.messages.batches.cancel(mb.id)
            cancel_after = time.time()
            assert cancelled.processing_status == "canceling" and cancelled.cancel_initiated_at is not None
            final = _anthropic_done(an, mb.id)
            results = list(an.messages.batches.results(mb.id))
            answered = [r.custom_id for r in results if r.result.type == "succeeded"]
            left = [r.custom_id for r in results if r.result.type == "canceled"]
            assert final.request_counts.canceled == len(left)
    low = math.floor(n * (cancel_before - after) / 2.0)
    high = math.floor(n * (cancel_after - before) / 2.0)
    assert low <= len(answered) <= high and 0 < len(answered) < n
    assert answered == [f"c{i}" for i in range(len(answered))]  # the first ones, in order
    assert len(answered) + len(left) == n
    assert sim.stats["batches_cancelled"] == 1


# --- listing, auth, validation ----------------------------------------------------------------------


def test_list_pages_newest_first_for_both_providers(sim_factory: Any) -> None:
    sim = sim_factory()
    with openai_client(sim.url) as client:
        made = [_openai_batch(client, [("x", _openai_body())]).id for _ in range(5)]
        first = client.batches.list(limit=2)
        assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
        assert [b.id for b in client.batches.list(limit=2)] == made[::-1]  # auto-paging: `after`
        assert [b.id for b in client.batches.list(after=made[2])] == made[:2][::-1]
    with anthropic_client(sim.url) as an:
        made = []
        for _ in range(5):
            made.append(
                an.messages.batches.create(requests=[{"custom_id": "x", "params": _anthropic_params()}]).id
            )  # type: ignore[list-item]
        page = an.messages.batches.list(limit=2)
        assert [b.id for b in page.data] == made[::-1][:2] and page.has_more
        assert page.first_id == made[4] and page.last_id == made[3]
        assert [b.id for b in an.messages.batches.list(limit=2)] == made[::-1]  # `after_id`
        assert [b.id for b in an.messages.batches.list(before_id=made[2]).data] == made[3:][::-1]


def test_batch_endpoints_need_a_key(sim_factory: Any) -> None:
    sim = sim_factory()
    for method, path in [
        ("POST", "/v1/files"),
        ("GET", "/v1/batches"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/files/file-x/content"),
        ("GET", "/v1/messages/batches"),
        ("POST", "/v1/messages/batches"),
        ("GET", "/v1/messages/batches/msgbatch_x/results"),
    ]:
        response = httpx.request(method, f"{sim.url}{path}")
        assert response.status_code == 401, path
    assert sim.stats["auth_failed"] == 7 and sim.stats["batches_created"] == 0
    with openai_client(sim.url) as client, pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


def test_anthropic_rejects_duplicate_and_malformed_custom_ids(sim_factory: Any) -> None:
    sim = sim_factory()
    with anthropic_client(sim.url) as an:
        for custom_ids, needle in [
            (["a", "a"], "not unique"),
            (["has space"], "pattern"),
            (["x" * 65], "pattern"),
        ]:
            requests = [{"custom_id": c, "params": _anthropic_params()} for c in custom_ids]
            with pytest.raises(anthropic.BadRequestError) as exc_info:
                an.messages.batches.create(requests=requests)  # type: ignore[arg-type]
            assert needle in exc_info.value.message
    assert sim.stats["batches_created"] == 0 and _stats(sim)["batches"] == 0


def test_openai_bad_input_file_fails_the_batch(sim_factory: Any) -> None:
    sim = sim_factory()
    with openai_client(sim.url) as client:
        batch = _openai_batch(client, [("same", _openai_body()), ("same", _openai_body())])
        assert batch.status == "failed" and batch.errors is not None and batch.errors.data
        assert batch.errors.data[0].code == "duplicate_custom_id" and batch.errors.data[0].line == 2
        with pytest.raises(openai.BadRequestError):
            client.batches.create(
                input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
            )


def test_forced_faults_apply_per_line_and_a_resubmission_is_the_next_attempt(sim_factory: Any) -> None:
    sim = sim_factory()
    with openai_client(sim.url) as client:
        lines = [
            ("f", _openai_body(model="gold+fault=500*1")),
            ("w", _openai_body(model="gold+fault=refusal")),
        ]
        first = _openai_done(client, _openai_batch(client, lines).id)
        [error] = _file_lines(client, first.error_file_id)
        [refused] = _file_lines(client, first.output_file_id)
        assert error["custom_id"] == "f" and error["response"]["status_code"] == 500
        assert refused["response"]["body"]["choices"][0]["message"]["refusal"]
        second = _openai_done(client, _openai_batch(client, lines[:1]).id)
        assert second.request_counts is not None and second.request_counts.completed == 1


def test_reset_forgets_batches(sim_factory: Any) -> None:
    sim = sim_factory()
    with openai_client(sim.url) as client:
        batch = _openai_batch(client, [("x", _openai_body())])
        assert _stats(sim)["batches"] == 1
        httpx.post(f"{sim.url}/_sim/reset")
        assert _stats(sim) == {
            "batches": 0,
            "lines": 0,
            "distinct_custom_ids": 0,
            "resubmitted_after_success": 0,
        }
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve(batch.id)


# --- configuration -----------------------------------------------------------------------------------


def test_batch_options_are_checked_and_reach_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--batch-delay-s", "3", "--batch-error-rate", "0.1", "--batch-expire-after-s", "2"]
    )
    config = config_from_args(args)
    assert (config.batch_delay_s, config.batch_error_rate, config.batch_expire_after_s) == (3.0, 0.1, 2.0)
    assert config.batch_dir is None
    for bad in (["--batch-error-rate", "1.5"], ["--batch-delay-s", "-1"], ["--batch-expire-after-s", "-2"]):
        with pytest.raises(BadInputError, match="batch_"):
            config_from_args(parser.parse_args(bad))


# --- two worker processes ----------------------------------------------------------------------------


def test_two_workers_share_batch_state_and_compute_results_once() -> None:
    questions = _questions(6)
    with spawn_simulator(
        ["--corpus", f"gsm8k:{GSM8K_TRAIN}", "--workers", "2", "--batch-delay-s", "0.5"]
    ) as sim:
        ids = []
        for i in range(4):  # each on a new connection: spread over the workers by the kernel
            with openai_client(sim.url) as client:
                lines = [
                    (f"b{i}-q{j}", _openai_body(render_prompt(q, "cot"))) for j, q in enumerate(questions)
                ]
                ids.append(_openai_batch(client, lines).id)
        with anthropic_client(sim.url) as an:
            requests = [
                {"custom_id": f"q{j}", "params": _anthropic_params(render_prompt(q, "cot"))}
                for j, q in enumerate(questions)
            ]
            anthropic_id = an.messages.batches.create(requests=requests).id  # type: ignore[arg-type]
        time.sleep(0.6)
        seen: list[tuple[str, str | None]] = []
        workers: set[int] = set()

        def poll() -> None:
            for batch_id in ids:
                with openai_client(sim.url) as client:  # new connections: both workers answer
                    batch = client.batches.retrieve(batch_id)
                    seen.append((batch.status, batch.output_file_id))
            workers.add(httpx.get(f"{sim.url}/_sim/health").json()["worker"])

        threads = [threading.Thread(target=poll) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(seen) == 32 and {status for status, _ in seen} == {"completed"}
        assert len({file_id for _, file_id in seen}) == 4  # one output file per batch, ever
        with anthropic_client(sim.url) as an:
            assert len(list(an.messages.batches.results(anthropic_id))) == 6
        stats = httpx.get(f"{sim.url}/_sim/stats").json()
        assert stats["workers"] == 2 and stats["batches_created"] == 5
        assert stats["batch_lines"] == stats["batch_lines_answered"] == 30  # each line answered once
        assert httpx.get(f"{sim.url}/_sim/batch-stats").json()["lines"] == 30
