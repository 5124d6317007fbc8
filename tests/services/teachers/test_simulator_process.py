"""`kpdd teacher-sim` as a process: several workers on one port, shared counters, clean exit,
and the command-line checks that fail before anything is served."""

from __future__ import annotations

import http.client
import os
import signal
import time
from typing import Any

import httpx
import orjson
import pytest

from services.cli.main import main
from services.kpdd.parsing import parse_response
from services.kpdd.prompts import render_prompt
from services.kpdd.records import KeyPoints
from services.teachers.simulator import spawn_simulator
from tests.services.teachers.simulator_helpers import GSM8K_TRAIN, call, openai_client

NATALIA = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


def _health(url: str) -> Any:
    """GET /_sim/health on a new connection (http.client: much cheaper than a new httpx client)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/_sim/health")
        return orjson.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_two_workers_share_the_port_and_the_counters() -> None:
    with spawn_simulator(["--corpus", f"gsm8k:{GSM8K_TRAIN}", "--workers", "2", "--seed", "5"]) as sim:
        assert sim.problems == 7473 and sim.workers == 2
        # fresh connections are spread over the workers by the kernel (SO_REUSEPORT)
        workers_seen = {_health(sim.url)["worker"] for _ in range(40)}
        assert workers_seen == {0, 1}
        for _ in range(6):  # a new client, so a new connection, each time
            with openai_client(sim.url) as client:
                text, finish = call(client, render_prompt(NATALIA, "cot"))
            kp = parse_response(text, finish, "cot")
            assert isinstance(kp, KeyPoints) and kp.final_answer_text == "72"
        stats = httpx.get(f"{sim.url}/_sim/stats").json()
        assert stats["workers"] == 2
        assert stats["requests"] == stats["answered"] == stats["openai"] == 6
        process = sim.process
        sim.close()
    assert process.returncode in (0, -signal.SIGTERM)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--wrong-rate", "2"], "between 0 and 1"),
        (["--error-rate", "0.7", "--hang-rate", "0.7"], "more than 1"),
        (["--corpus", "train.jsonl"], "FORMAT:PATH"),
        (["--corpus", "gsm8k:/nonexistent/train.jsonl"], "no such file"),
        (["--corpus", "klingon:/x"], "unknown corpus format"),
        (["--workers", "0"], "workers"),
        (["--latency-ms", "-1"], "negative"),
    ],
)
def test_bad_options_exit_2_before_serving(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["teacher-sim", "--port", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kpdd: error:") and needle in err


def test_a_taken_port_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with spawn_simulator([]) as sim:
        port = sim.url.rsplit(":", 1)[1]
        assert main(["teacher-sim", "--port", port]) == 2
    assert "pick another --port" in capsys.readouterr().err


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_exit_when_the_parent_is_killed() -> None:
    sim = spawn_simulator(["--workers", "2"])
    try:
        pids = {_health(sim.url)["pid"] for _ in range(40)}
        assert len(pids) == 2 and sim.process.pid not in pids
        sim.process.kill()  # SIGKILL: the parent cannot stop its workers itself
        sim.process.wait()
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in pids)
    finally:
        sim.close()
