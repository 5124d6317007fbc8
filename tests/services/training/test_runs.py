"""Run records and their checks through `kpdd train`, `runs`, `run show|cancel`, on SQLite and
Postgres, without launching training (the launches are in test_train_e2e.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from db.engine import get_engine, session_scope
from db.queries import training as q
from services.training.runs import TrainRequest, create_run, execute_run
from tests.conftest import CliResult

CONFIG = Path(__file__).resolve().parents[3] / "training" / "configs" / "tiny-llama.yaml"


def _runs(kpdd: Callable[..., CliResult]) -> list[dict]:
    result = kpdd("runs", "--json")
    assert result.code == 0, result.err
    return orjson.loads(result.out)["runs"]


def test_a_snapshot_that_does_not_verify_is_refused_naming_the_file(
    kpdd: Callable[..., CliResult], pot_snapshot: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "snap"
    shutil.copytree(pot_snapshot, copy)
    data = next((copy / "data").rglob("train.*"))
    data.write_bytes(data.read_bytes() + b"\n")
    result = kpdd("train", "--snapshot", copy, "--config", CONFIG)
    assert result.code == 2
    assert "does not verify" in result.err and data.relative_to(copy).as_posix() in result.err
    assert _runs(kpdd) == []


def test_bad_launch_arguments_are_refused_before_a_run_is_recorded(
    kpdd: Callable[..., CliResult], pot_snapshot: Path, tmp_path: Path
) -> None:
    missing = kpdd("train", "--snapshot", pot_snapshot, "--config", tmp_path / "nope.yaml")
    assert missing.code == 2 and "--config" in missing.err and "nope.yaml" in missing.err
    hosts = tmp_path / "hosts"
    hosts.write_text("node-1 slots=8\nnode-2\n")
    bad_hosts = kpdd("train", "--snapshot", pot_snapshot, "--config", CONFIG, "--hostfile", hosts)
    assert bad_hosts.code == 2 and "line 2: expected 'HOSTNAME slots=N'" in bad_hosts.err
    no_broker = kpdd("train", "--snapshot", pot_snapshot, "--config", CONFIG, "--submit")
    assert no_broker.code == 2 and "KPDD_BROKER_URL" in no_broker.err
    bad_set = kpdd("train", "--snapshot", pot_snapshot, "--config", CONFIG, "--set", "optim.lr")
    assert bad_set.code == 2 and "expected KEY=VALUE" in bad_set.err
    assert _runs(kpdd) == []
    unknown = kpdd("run", "show", "99")
    assert unknown.code == 2 and "no training run 99" in unknown.err


def test_a_run_whose_supervisor_went_silent_is_marked_failed_with_the_reason(
    kpdd: Callable[..., CliResult], db_url: str, pot_snapshot: Path, tmp_path: Path
) -> None:
    engine = get_engine(db_url)
    run_id = create_run(engine, TrainRequest(pot_snapshot, CONFIG), data_dir=tmp_path, submitted=False)
    with session_scope(engine) as session:
        q.set_run_state(session, run_id, "running", heartbeat_at=datetime.now(UTC) - timedelta(minutes=10))
    [run] = _runs(kpdd)
    assert run["run_id"] == run_id and run["state"] == "failed"
    assert "supervisor lost: no heartbeat" in run["reason"]
    shown = kpdd("run", "show", run_id, "--json")
    assert orjson.loads(shown.out)["state"] == "failed"


def test_a_fresh_heartbeat_keeps_a_run_running(
    kpdd: Callable[..., CliResult], db_url: str, pot_snapshot: Path, tmp_path: Path
) -> None:
    engine = get_engine(db_url)
    run_id = create_run(engine, TrainRequest(pot_snapshot, CONFIG), data_dir=tmp_path, submitted=False)
    with session_scope(engine) as session:
        q.set_run_state(session, run_id, "running", heartbeat_at=datetime.now(UTC))
    [run] = _runs(kpdd)
    assert run["state"] == "running" and run["reason"] is None
    assert run["run_dir"] == str((tmp_path / "runs" / f"run-{run_id}").resolve())


def test_a_cancelled_queued_run_is_never_started(
    kpdd: Callable[..., CliResult], db_url: str, pot_snapshot: Path, tmp_path: Path
) -> None:
    engine = get_engine(db_url)
    run_id = create_run(engine, TrainRequest(pot_snapshot, CONFIG), data_dir=tmp_path, submitted=True)
    result = kpdd("run", "cancel", run_id)
    assert result.code == 0 and "cancelled" in result.out
    assert execute_run(engine, run_id) == "cancelled"  # a late delivery claims nothing
    [run] = _runs(kpdd)
    assert run["state"] == "cancelled" and run["reason"] == "cancelled by `kpdd run cancel`"
    assert not (tmp_path / "runs" / f"run-{run_id}").exists()
    again = kpdd("run", "cancel", run_id)
    assert again.code == 0 and "already ended" in again.out
