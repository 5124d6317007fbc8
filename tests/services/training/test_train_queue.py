"""Queued training against real components: the suite's private Postgres and Redis, `kpdd
worker` processes (Celery) for the generation and the training queues, and a real DeepSpeed
launch started by the training worker.

Shown here: a generation worker never takes a training run; a training worker claims it, runs it
to the end and streams its progress into Postgres; a launch killed outright marks the run failed
with the reason, never `running` forever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.servers import RedisServer
from tests.services.training.conftest import REPO, kpdd_cli

CONFIG = REPO / "training" / "configs" / "tiny-llama.yaml"


class Workers:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, queues: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"worker-{queues}-{len(self.procs)}.log").open("wb")
        full = {k: v for k, v in os.environ.items() if not k.startswith("KPDD_")} | self.env
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "worker", "--queues", queues, "--loglevel", "INFO"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full,
            cwd=REPO,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=20)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue


@pytest.fixture
def queue_env(pg_url: str, redis_server: RedisServer, tmp_path: Path, datasets_dir: Path) -> dict[str, str]:
    return {
        "KPDD_DATABASE_URL": pg_url,
        "KPDD_BROKER_URL": redis_server.url(),
        "KPDD_DATA_DIR": str(tmp_path / "kpdd-data"),
        "KPDD_DATASETS_DIR": str(datasets_dir),
    }


@pytest.fixture
def workers(queue_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(queue_env, tmp_path)
    yield pool
    pool.close()


def _show(env: dict[str, str], run_id: int) -> dict:
    return orjson.loads(kpdd_cli(["run", "show", str(run_id), "--json"], env).stdout)


def _wait(env: dict[str, str], run_id: int, until: object, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = _show(env, run_id)
        if until(run):  # type: ignore[operator]
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} did not get there in {timeout} s: {run}")
        time.sleep(1.0)


def _submit(env: dict[str, str], snapshot: Path, *args: str) -> int:
    proc = kpdd_cli(
        ["train", "--snapshot", str(snapshot), "--config", str(CONFIG), "--submit", "--json", *args], env
    )
    run = orjson.loads(proc.stdout)
    assert run["state"] == "queued" and run["submitted"] is True
    return int(run["run_id"])


@pytest.mark.postgres
@pytest.mark.redis
def test_a_queued_run_is_taken_by_a_training_worker_only(
    queue_env: dict[str, str], workers: Workers, pot_snapshot: Path
) -> None:
    workers.start("generation")
    run_id = _submit(
        queue_env, pot_snapshot, "--set", "train.max_steps=6", "--set", "train.log_every_steps=2"
    )
    time.sleep(6)
    assert _show(queue_env, run_id)["state"] == "queued"  # the generation worker left it alone
    workers.start("training")
    run = _wait(queue_env, run_id, lambda r: r["state"] not in ("queued", "preparing", "running"))
    assert run["state"] == "succeeded", run["reason"]
    assert run["step"] == 6 and run["last_loss"] is not None and run["worker_host"]
    assert Path(run["final_dir"], "kpdd_student.json").is_file()


@pytest.mark.postgres
@pytest.mark.redis
def test_a_killed_launch_marks_the_run_failed_with_the_reason(
    queue_env: dict[str, str], workers: Workers, pot_snapshot: Path
) -> None:
    workers.start("training")
    run_id = _submit(
        queue_env, pot_snapshot, "--set", "train.max_steps=100000", "--set", "train.log_every_steps=1"
    )
    run = _wait(queue_env, run_id, lambda r: r["state"] == "running" and r["step"] >= 1)
    os.kill(run["launcher_pid"], signal.SIGKILL)
    run = _wait(queue_env, run_id, lambda r: r["state"] != "running", timeout=60)
    assert run["state"] == "failed"
    assert f"killed by signal {int(signal.SIGKILL)}" in run["reason"]
    assert run["finished_at"] is not None
