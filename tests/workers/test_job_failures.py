"""Every job ends, with its reason: failures against real components (the suite's Postgres and
Redis, `kpdd worker` processes, the simulator over HTTP).

Faults inside a worker are injected with a `sitecustomize` module on the worker's PYTHONPATH
(`_inject`): it wraps `Generator._row` so that the rationale of one chosen problem raises a bug or
carries a value too long for its column (a real DataError from Postgres). Nothing in the
project's code knows about it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
import redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.models import GenerationJob, JobFailure, JobProblem, Problem, Rationale, TeacherCall
from services.generation.dispatch import DEFAULT_QUEUE, PROCESS_CHUNK_TASK
from tests.servers import PostgresServer
from tests.workers.cluster import REPO, Cluster, assert_exact, generate, ingest

_SITECUSTOMIZE = """
import os

_mode = os.environ.get("KPDD_TEST_FAULT")
if _mode:
    from services.generation import execute

    _original = execute.Generator._row

    def _row(self, job_id, result):
        row = _original(self, job_id, result)
        if os.environ["KPDD_TEST_FAULT_QUESTION"] in result.item.problem.question:
            if _mode == "bug":
                raise RuntimeError("injected: a bug met on this problem")
            row["verdict_kind"] = "x" * 40  # verdict_kind is VARCHAR(32)
        return row

    execute.Generator._row = _row
"""


def _inject(cluster: Cluster, fault: str, question: str) -> None:
    folder = cluster.tmp / "inject"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE, encoding="utf-8")
    cluster.env["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO)])
    cluster.env["KPDD_TEST_FAULT"] = fault
    cluster.env["KPDD_TEST_FAULT_QUESTION"] = question


def _logs(cluster: Cluster) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(cluster.tmp.glob("worker-*.log")))


def _session(cluster: Cluster) -> Session:
    return Session(create_engine(cluster.db_url))


def _json_lines(text: str) -> list[dict]:  # type: ignore[type-arg]
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


# --- permanent failures ---------------------------------------------------------------------


def test_a_worker_without_the_teachers_key_fails_the_job_at_once_with_the_reason(
    cluster: Cluster, datasets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(cluster, datasets_dir, 20)
    url = cluster.simulator(datasets_dir)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-submitters-own-key")  # the submitter has the key
    job = generate(cluster, "--teacher", f"openai:gpt-4o-mini@{url}/v1", "--chunk-size", "4")
    monkeypatch.delenv("OPENAI_API_KEY")
    cluster.start_worker()  # ...and the worker does not
    assert cluster.wait(job, timeout=60) == "failed"

    with _session(cluster) as session:
        row = session.get(GenerationJob, job)
        assert row is not None and row.stop_reason is not None
        assert row.stop_reason.startswith("config on worker ")
        assert "OPENAI_API_KEY" in row.stop_reason
        problems = session.execute(
            select(JobProblem.state, JobProblem.error_kind, func.count()).group_by(
                JobProblem.state, JobProblem.error_kind
            )
        ).all()
        assert problems == [("failed", "config", 20)]
        failures = session.scalars(select(JobFailure).where(JobFailure.job_id == job)).all()
        # The admission check records the missing key (config_mismatch), the chunk then fails it.
        assert failures and {f.kind for f in failures} == {"config", "config_mismatch"}
        failures = [f for f in failures if f.kind == "config"]
        assert all(re.fullmatch(r".+:\d+", f.worker or "") and f.chunk is not None for f in failures)
        assert sum(f.problems for f in failures) == 20  # the first one failed every pending problem
        messages = [f.message for f in failures] + [row.stop_reason]
        assert session.scalar(select(func.count()).select_from(TeacherCall)) == 0
    assert all("sk-submitters-own-key" not in m for m in messages)
    assert cluster.sims[0].stats["requests"] == 0  # type: ignore[attr-defined]

    code, out = cluster.kpdd("status", str(job), "--json")
    status = orjson.loads(out)
    by_kind = {k["kind"]: k for k in status["failures"]["by_kind"]}
    assert set(by_kind) == {"config", "config_mismatch"}
    config = by_kind["config"]
    assert config["problems"] == 20
    assert "OPENAI_API_KEY" in config["message"] and config["workers"]
    assert status["problems"]["done"] == 0
    # Following a failed job exits 1; --json streams one line per update and a last one.
    code, out = cluster.kpdd("status", str(job), "--watch", "--json")
    lines = _json_lines(out)
    assert code == 1 and lines[-1]["event"] == "end" and lines[-1]["exit_code"] == 1
    assert lines[-1]["status"] == "failed"


@pytest.mark.parametrize(("fault", "kind"), [("too_long", "bad_value"), ("bug", "unexpected")])
def test_a_permanent_error_on_one_problem_fails_that_problem_only_and_is_never_retried(
    cluster: Cluster, datasets_dir: Path, fault: str, kind: str
) -> None:
    ingest(cluster, datasets_dir, 12)
    lines = (datasets_dir / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    target = json.loads(lines[5])["question"][:60]
    _inject(cluster, fault, target)
    url = cluster.simulator(datasets_dir)
    cluster.start_worker()
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "cot", "--chunk-size", "4")
    # A system failure fails the job (teacher failures alone would not): module doc of
    # db.queries.failures.
    assert cluster.wait(job, timeout=90) == "failed"

    assert cluster.job_counts(job) == {"done": 11, "failed": 1}
    with _session(cluster) as session:
        failed = session.execute(
            select(Problem.question, JobProblem.error_kind, JobProblem.error_message, JobProblem.attempts)
            .join(Problem, Problem.id == JobProblem.problem_id)
            .where(JobProblem.state == "failed")
        ).one()
        recorded = session.scalars(select(JobFailure).where(JobFailure.job_id == job)).all()
        stop_reason = session.scalar(select(GenerationJob.stop_reason).where(GenerationJob.id == job))
        calls = session.scalar(select(func.count()).select_from(TeacherCall))
        rationales = session.scalar(select(func.count()).select_from(Rationale))
    assert failed.question.startswith(target) and failed.error_kind == kind
    assert failed.attempts == 2  # the chunk's run, then its own run alone
    assert [(f.kind, f.problems) for f in recorded] == [(kind, 1)]
    assert recorded[0].problem_id is not None and re.fullmatch(r".+:\d+", recorded[0].worker or "")
    assert stop_reason is not None and stop_reason.startswith(f"1 of 12 problems failed ({kind} 1); {kind}: ")
    assert rationales == 11
    # Never retried, never paid twice: the problems run one by one replayed their calls.
    assert "retry" not in _logs(cluster).lower()
    assert calls == 12 and cluster.sims[0].stats["requests"] == 12  # type: ignore[attr-defined]

    code, human = cluster.kpdd("status", str(job))
    assert code == 0
    assert f"failed {kind}: 1 problem(s), recorded 1x on " in human
    assert "problems done 11/12" in human


# --- transient failures ---------------------------------------------------------------------


def _chunk_messages(client: redis.Redis) -> Counter[tuple[int, int]]:
    """How many messages of each (job, chunk) the broker holds: queued, or delivered to a worker
    and not acknowledged (ETA retries included)."""
    payloads = []
    for key in (DEFAULT_QUEUE, *(f"{DEFAULT_QUEUE}\x06\x16{step}" for step in (3, 6, 9))):
        payloads.extend(json.loads(raw) for raw in client.lrange(key, 0, -1))  # type: ignore[union-attr]
    payloads.extend(json.loads(raw)[0] for raw in client.hvals("unacked"))  # type: ignore[union-attr]
    found: Counter[tuple[int, int]] = Counter()
    for payload in payloads:
        if (payload.get("headers") or {}).get("task") == PROCESS_CHUNK_TASK:
            args = json.loads(base64.b64decode(payload["body"]))[0]
            found[(int(args[0]), int(args[1]))] += 1
    return found


class _Sampler(threading.Thread):
    """Reads the broker every 0.1 s and keeps the most copies of one chunk ever seen."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.stopped = threading.Event()
        self.most = 0
        self.samples = 0

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            counts = _chunk_messages(self.client)
            self.most = max(self.most, *counts.values(), 0)
            self.samples += 1

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)


def test_a_postgres_outage_longer_than_the_visibility_timeout_neither_drops_nor_multiplies_chunks(
    cluster: Cluster, datasets_dir: Path, postgres_server: PostgresServer
) -> None:
    ingest(cluster, datasets_dir, 24)
    url = cluster.simulator(datasets_dir, latency_ms=50)
    cluster.start_worker(concurrency=2)
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "cot", "--chunk-size", "3")
    cluster.wait_for_rationales(3)
    sampler = _Sampler(cluster.redis.url())
    sampler.start()
    postgres_server.stop("immediate")
    time.sleep(3 * int(cluster.env["KPDD_VISIBILITY_TIMEOUT_S"]))  # 18 s against a 6 s timeout
    postgres_server.start()
    try:
        assert cluster.wait(job, timeout=180) == "completed"
    finally:
        sampler.stop()
    assert_exact(cluster, job, problems=24, per_problem=1)
    logs = _logs(cluster)
    assert "database_unavailable" in logs and re.search(r"retry \d+ of \d+ in", logs)
    assert "gave up" not in logs
    assert "skipped (" not in logs  # no copy of a chunk ran after another
    # One message per chunk at any time; two for the instant a retry is sent before its
    # original is acknowledged. A retry waiting past the visibility timeout would be handed
    # out again by Redis, and every copy would retry in turn.
    assert sampler.samples > 50 and sampler.most <= 2, sampler.most


def test_a_chunk_that_runs_out_of_retries_stays_pending_and_resume_finishes_it(
    cluster: Cluster, datasets_dir: Path, postgres_server: PostgresServer
) -> None:
    ingest(cluster, datasets_dir, 12)
    url = cluster.simulator(datasets_dir, latency_ms=50)
    cluster.env["KPDD_CHUNK_RETRY_WINDOW_S"] = "2"
    # The reconciler would find the given-up chunks too and could finish the job before `resume`
    # runs (tests/workers/test_reconciler.py covers that path); here it stays out of the way.
    cluster.env["KPDD_RECONCILE_INTERVAL_S"] = "3600"
    cluster.start_worker()
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "cot", "--chunk-size", "3")
    cluster.wait_for_rationales(3)
    postgres_server.stop("immediate")
    deadline = time.monotonic() + 60
    while "gave up after" not in _logs(cluster):
        assert time.monotonic() < deadline, _logs(cluster)[-3000:]
        time.sleep(0.2)
    time.sleep(2)
    postgres_server.start()
    assert "its pending problems stay pending for `kpdd resume" in _logs(cluster)
    assert cluster.job_counts(job).get("pending", 0) > 0  # nothing was marked failed
    time.sleep(int(cluster.env["KPDD_VISIBILITY_TIMEOUT_S"]))  # leases of the dead attempts expire
    code, out = cluster.kpdd("resume", str(job), "--json")
    assert code == 0, out
    assert cluster.wait(job, timeout=120) == "completed"
    assert_exact(cluster, job, problems=12, per_problem=1)


# --- cancel -----------------------------------------------------------------------------------


def test_cancel_stops_calls_and_writes_and_records_the_calls_in_flight(
    cluster: Cluster, datasets_dir: Path
) -> None:
    ingest(cluster, datasets_dir, 80)
    url = cluster.simulator(datasets_dir, latency_ms=300)
    threads = int(cluster.env["KPDD_WORKER_THREADS"])
    cluster.start_worker()
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "cot", "--chunk-size", "40")
    cluster.wait_for_rationales(1)  # the first chunk's rationales are written; the second is asked
    time.sleep(0.5)
    code, out = cluster.kpdd("cancel", str(job), "--json")
    assert code == 0, out
    written, asked = cluster.rationales(), cluster.sims[0].stats["requests"]  # type: ignore[attr-defined]
    time.sleep(3)
    with _session(cluster) as session:
        calls = session.scalar(select(func.count()).select_from(TeacherCall))
        status = session.scalar(select(GenerationJob.status).where(GenerationJob.id == job))
    after = cluster.sims[0].stats["requests"]  # type: ignore[attr-defined]
    assert status == "cancelled"
    assert cluster.rationales() == written == 40  # nothing written after the cancel
    # At most the calls in flight, and those started within the status check's 0.25 s.
    assert after - asked <= 2 * threads
    assert asked < 60  # the cancel came early in the second chunk: its other calls were never sent
    assert calls == after  # every call answered, in flight at the cancel included, is in the ledger
    assert cluster.job_counts(job) == {"done": 40, "cancelled": 40}
    code, out = cluster.kpdd("status", str(job), "--watch")
    assert code == 1 and "cancelled" in out


# --- following a job ----------------------------------------------------------------------


def test_generate_wait_streams_progress_and_exits_by_how_the_job_ended(
    cluster: Cluster, datasets_dir: Path
) -> None:
    ingest(cluster, datasets_dir, 16)
    url = cluster.simulator(datasets_dir, latency_ms=100)
    cluster.start_worker()
    code, out = cluster.kpdd(
        "generate", "--corpus", "g", "--teacher", f"sim:gold@{url}", "--chunk-size", "4", "--wait", "--json"
    )
    lines = _json_lines(out)
    assert code == 0, out
    assert [line["event"] for line in lines][-1] == "end" and {"update"} <= {line["event"] for line in lines}
    assert lines[-1]["status"] == "completed" and lines[-1]["exit_code"] == 0
    assert lines[-1]["problems"]["done"] == 16
    finished = [sum(n for s, n in line["problems"]["by_state"].items() if s != "pending") for line in lines]
    assert finished == sorted(finished)

    code, out = cluster.kpdd(
        "generate", "--corpus", "g", "--teacher", f"sim:gold@{url}", "--samples", "2", "--wait"
    )
    assert code == 0, out
    progress = [
        line for line in out.splitlines() if re.match(r"job \d+ (queued|running): \d+/16 problems", line)
    ]
    assert progress, out  # plain lines when stdout is not a terminal
    assert re.search(r"^job \d+: completed", out, re.M), out  # then the job's status
