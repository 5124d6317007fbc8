"""A worker's own Prometheus metrics (multiprocess mode): the counters of every pool process,
summed by the main process, agree with what the job wrote to Postgres."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.models import Rationale, TeacherCall
from tests.workers.cluster import Cluster, generate, ingest


def _sample(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_worker_metrics_sum_every_pool_process(cluster: Cluster, datasets_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster.env["KPDD_WORKER_METRICS_PORT"] = str(port)
    ingest(cluster, datasets_dir, 16)
    url = cluster.simulator(datasets_dir)
    cluster.start_worker(concurrency=2)
    job = generate(cluster, "--teacher", f"sim:gold@{url}", "--mode", "both", "--chunk-size", "2")
    assert cluster.wait(job) == "completed"
    engine = create_engine(cluster.db_url)
    with Session(engine) as session:
        rationales = session.scalar(select(func.count()).select_from(Rationale))
        valid = session.scalar(select(func.count()).where(Rationale.verdict == "valid"))
        calls = session.scalar(select(func.count()).select_from(TeacherCall))
        tokens_out = session.scalar(select(func.sum(TeacherCall.tokens_out)))
    engine.dispose()
    deadline = time.monotonic() + 30
    while True:  # the last chunk's counters are written just after its rows
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        if _sample(text, "kpdd_worker_chunks_total") >= 8 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert _sample(text, 'kpdd_worker_chunks_total{outcome="done"}') == 8
    assert _sample(text, 'kpdd_worker_rationales_total{result="valid"}') == valid
    assert _sample(text, "kpdd_worker_rationales_total") == rationales == 32
    assert _sample(text, 'kpdd_worker_teacher_calls_total{model="gold",provider="sim"}') == calls
    assert (
        _sample(text, 'kpdd_worker_teacher_tokens_total{direction="out",model="gold",provider="sim"}')
        == tokens_out
    )
