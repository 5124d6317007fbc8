"""Training runs: record a run, prepare and launch it, stream its progress into the database.

`create_run` checks what can be checked without the training stack (the snapshot verifies
against its manifest, the config file and hostfile are readable) and records the run;
`execute_run` does the rest wherever the run is executed: in the `kpdd train` process itself,
or on a GPU host's `kpdd worker --queues training` for a run queued with `--submit`. There it
claims the run (one worker only), resolves the config (`training.prepare`: bad config -> the run
fails with the message), starts the DeepSpeed launcher, renews the run's heartbeat while it
streams step, loss, tokens/s, MFU and memory into the row, and ends the run in a terminal state
that says why. A supervisor killed outright stops sending heartbeats, and the listing marks its
run failed (`KPDD_RUN_HEARTBEAT_TIMEOUT_S`), so no run stays `running` forever.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from db.engine import session_scope
from db.models import TrainingRun
from db.queries import training as q
from services.config import get_settings
from services.errors import BadInputError, KpddError, RunFailure
from services.export.manifest import MANIFEST, verify_snapshot
from services.training import launch

log = logging.getLogger(__name__)

# The `--eval-*` options of `kpdd train`, stored in the run's metrics document.
_EVAL_KEYS = ("eval_limit", "eval_mode")
HEARTBEAT_INTERVAL_S = 2.0


@dataclass(slots=True)
class TrainRequest:
    """`kpdd train`'s arguments, checked by `create_run`."""

    snapshot: Path
    config: Path
    overrides: list[str] = field(default_factory=list)
    num_gpus: int = 1
    hostfile: Path | None = None
    resume: str = "never"
    run_dir: Path | None = None
    eval_datasets: list[str] = field(default_factory=list)
    eval_limit: int | None = None
    eval_mode: str | None = None


def verified_snapshot(path: Path) -> dict[str, Any]:
    """The manifest of a snapshot whose every file matches it; BadInputError naming each file
    that does not (training never reads a snapshot that changed after export)."""
    report = verify_snapshot(path)
    if not report.ok:
        raise BadInputError(
            f"snapshot {path} does not verify, refusing to train on it: {'; '.join(report.problems)} "
            f"(`kpdd snapshot verify {path}` lists the same; export it again)"
        )
    manifest: dict[str, Any] = json.loads((path / MANIFEST).read_bytes())
    return manifest


def _read_text(path: Path, flag: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise BadInputError(f"{flag} {path}: cannot read it ({exc.strerror})") from None


def create_run(engine: Engine, request: TrainRequest, *, data_dir: Path, submitted: bool) -> int:
    """Check the request and record the run (`queued` when submitted, else `preparing`)."""
    if request.resume not in ("auto", "never"):
        raise BadInputError(f"--resume: {request.resume!r} is not one of auto, never")
    if request.num_gpus < 1:
        raise BadInputError(f"--num-gpus: must be at least 1, got {request.num_gpus}")
    snapshot = request.snapshot.resolve()
    manifest = verified_snapshot(snapshot)
    config_text = _read_text(request.config, "--config")
    hostfile_text = None
    world_size = request.num_gpus
    if request.hostfile is not None:
        hostfile_text = _read_text(request.hostfile, "--hostfile")
        world_size = launch.hostfile_slots(hostfile_text, str(request.hostfile))
    for item in request.overrides:
        if "=" not in item:
            raise BadInputError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=3e-4")
    with session_scope(engine) as session:
        run = q.add_run(
            session,
            state="queued" if submitted else "preparing",
            snapshot_id=str(manifest["snapshot_id"]),
            snapshot_path=str(snapshot),
            config_path=str(request.config),
            config_text=config_text,
            overrides=list(request.overrides),
            num_gpus=request.num_gpus,
            hostfile=hostfile_text,
            world_size=world_size,
            run_dir="",
            resume=request.resume,
            eval_datasets=list(request.eval_datasets),
            submitted=submitted,
            # Evaluation options, kept in the metrics document (see `_EVAL_KEYS`).
            metrics={
                key: value
                for key, value in (("eval_limit", request.eval_limit), ("eval_mode", request.eval_mode))
                if value is not None
            },
        )
        run_dir = (request.run_dir or data_dir / "runs" / f"run-{run.id}").resolve()
        q.update_run(session, run.id, run_dir=str(run_dir))
        return run.id


def submit_new_run(engine: Engine, request: TrainRequest, *, data_dir: Path, broker_url: str) -> int:
    """Record a run and queue it on the training queue (`kpdd train --submit`, `POST /api/runs`).
    A run that cannot be queued is marked failed with the reason, and RunFailure says so."""
    from services.training.dispatch import submit_run

    run_id = create_run(engine, request, data_dir=data_dir, submitted=True)
    try:
        submit_run(broker_url, run_id)
    except Exception as exc:
        with session_scope(engine) as session:
            q.set_run_state(session, run_id, "failed", reason=f"could not queue the run: {exc}")
        raise RunFailure(
            f"run {run_id} could not be queued ({type(exc).__name__}: {exc}); check KPDD_BROKER_URL "
            "and that Redis is running; the run is marked failed"
        ) from None
    return run_id


def _now() -> datetime:
    return datetime.now(UTC)


def _load(engine: Engine, run_id: int) -> TrainingRun:
    with session_scope(engine) as session:
        run = q.get_run(session, run_id)
        if run is None:
            raise BadInputError(f"no training run {run_id} (see `kpdd runs`)")
        session.expunge(run)
        return run


def execute_run(
    engine: Engine,
    run_id: int,
    *,
    echo: bool = False,
    watch: Callable[[launch.Progress], None] | None = None,
) -> str:
    """Prepare, launch and supervise a recorded run; returns its terminal state. A queued run is
    claimed first: if another worker has it, or it was cancelled, nothing is done. `echo` shows
    the evaluation's table (when the run asks for one) on stderr; `watch` is called with the
    progress at every heartbeat (the CLI's progress display)."""
    run = _load(engine, run_id)
    host = socket.gethostname()
    with session_scope(engine) as session:
        if run.state == "queued" and not q.set_run_state(
            session, run_id, "preparing", only_from=("queued",), worker_host=host, heartbeat_at=_now()
        ):
            log.info("run %s: already claimed or ended, skipping", run_id)
            return q.get_run(session, run_id).state  # type: ignore[union-attr]
        if run.state not in ("queued", "preparing"):
            return run.state
        q.heartbeat(session, run_id, _now(), worker_host=host)
    try:
        return _prepare_and_launch(engine, run, echo=echo, watch=watch)
    except KpddError as exc:
        _end(engine, run_id, "failed", str(exc))
        raise
    except KeyboardInterrupt:
        _end(engine, run_id, "cancelled", "interrupted (SIGINT) while running")
        raise
    except Exception as exc:  # a bug of ours: the run must still end, saying why
        _end(engine, run_id, "failed", f"unexpected error in the supervisor: {type(exc).__name__}: {exc}")
        raise


def _end(engine: Engine, run_id: int, state: str, reason: str | None, **fields: Any) -> None:
    with session_scope(engine) as session:
        q.set_run_state(session, run_id, state, reason=reason, **fields)


def _prepare_and_launch(
    engine: Engine, run: TrainingRun, *, echo: bool, watch: Callable[[launch.Progress], None] | None
) -> str:
    run_dir = Path(run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    verified_snapshot(Path(run.snapshot_path))
    # The config as recorded (a queued run does not need the submitter's file).
    given = run_dir / "given-config.yaml"
    given.write_text(run.config_text)
    world_size = run.world_size or run.num_gpus
    argv = ["-m", "training.prepare", "--snapshot", run.snapshot_path, "--config", str(given)]
    for item in run.overrides:
        argv += ["--set", item]
    argv += ["--run-dir", str(run_dir), "--world-size", str(world_size)]
    prepared = launch.run_child(argv, "training.prepare")
    hostfile = None
    if run.hostfile:
        hostfile = run_dir / "hostfile"
        hostfile.write_text(run.hostfile)
    with session_scope(engine) as session:
        q.update_run(
            session,
            run.id,
            resolved_config=prepared.get("config"),
            deepspeed_config=prepared.get("deepspeed"),
            layout=prepared.get("layout"),
            world_size=world_size,
        )
        if not q.set_run_state(session, run.id, "running", only_from=("preparing",), started_at=_now()):
            return "cancelled"
    argv = launch.launcher_command(
        run_dir, num_gpus=run.num_gpus, hostfile=hostfile, resume=run.resume, master_port=launch.free_port()
    )
    kept = {key: run.metrics[key] for key in _EVAL_KEYS if key in run.metrics}
    outcome = launch.supervise(
        argv,
        run_dir,
        on_start=lambda pid: _record(engine, run.id, launcher_pid=pid),
        on_progress=lambda progress: _on_progress(engine, run.id, progress, kept, watch),
        should_stop=lambda: _cancel_reason(engine, run.id),
        interval_s=HEARTBEAT_INTERVAL_S,
    )
    fields = _progress_fields(outcome.progress, kept)
    final_dir = outcome.progress.status.get("final_dir")
    if outcome.state == "succeeded" and final_dir:
        fields["final_dir"] = str(final_dir)
    if outcome.state == "cancelled":
        _record(engine, run.id, **fields)
        return "cancelled"
    _end(engine, run.id, outcome.state, outcome.reason, **fields)
    if outcome.state == "succeeded" and run.eval_datasets and final_dir:
        _evaluate_after(engine, run, Path(final_dir), echo=echo)
    return outcome.state


def _evaluate_after(engine: Engine, run: TrainingRun, final_dir: Path, *, echo: bool) -> None:
    """The evaluation asked for with `kpdd train --eval`: its failure is the evaluation's, not
    the run's (the model is trained and saved)."""
    from services.training.evaluation import EvalRequest, run_evaluation

    request = EvalRequest(
        model_dir=final_dir,
        datasets=list(run.eval_datasets),
        limit=run.metrics.get("eval_limit"),
        mode=run.metrics.get("eval_mode"),
        run_id=run.id,
        out_dir=Path(run.run_dir) / "eval",
    )
    try:
        run_evaluation(engine, request, echo=echo)
    except KpddError as exc:
        log.error("run %s: evaluation failed: %s", run.id, exc)


def _progress_fields(progress: launch.Progress, kept: dict[str, Any]) -> dict[str, Any]:
    """The run columns a progress report sets; `kept` are metrics entries recorded at creation
    (the evaluation's options)."""
    last = progress.last
    return {
        "step": progress.step,
        "total_steps": progress.total_steps,
        "last_loss": last.get("loss"),
        "tokens_per_s_per_gpu": last.get("tokens_per_s_per_gpu"),
        "mfu": last.get("mfu"),
        "peak_memory_bytes": last.get("peak_memory_bytes"),
        "metrics": {**kept, **progress.summary()},
    }


def _on_progress(
    engine: Engine,
    run_id: int,
    progress: launch.Progress,
    kept: dict[str, Any],
    watch: Callable[[launch.Progress], None] | None,
) -> None:
    _record(engine, run_id, **_progress_fields(progress, kept))
    if watch is not None:
        watch(progress)


def _record(engine: Engine, run_id: int, **fields: Any) -> None:
    """Progress and heartbeat; a database outage is logged, never fatal to a training run."""
    try:
        with session_scope(engine) as session:
            q.heartbeat(session, run_id, _now(), **fields)
    except Exception as exc:
        log.warning("run %s: could not record progress (%s); training goes on", run_id, exc)


def _cancel_reason(engine: Engine, run_id: int) -> str | None:
    try:
        with session_scope(engine) as session:
            run = q.get_run(session, run_id)
            if run is not None and run.state == "cancelled":
                return run.state_reason or "cancelled"
    except Exception as exc:
        log.warning("run %s: could not read its state (%s)", run_id, exc)
    return None


def cancel_run(engine: Engine, run_id: int) -> bool:
    """Ask a live run to stop: a queued one never starts, a running one's supervisor stops its
    launcher within a heartbeat. False when the run had already ended."""
    with session_scope(engine) as session:
        if q.get_run(session, run_id) is None:
            raise BadInputError(f"no training run {run_id} (see `kpdd runs`)")
        return q.set_run_state(session, run_id, "cancelled", reason="cancelled by `kpdd run cancel`")


def reap_stale(engine: Engine) -> list[int]:
    with session_scope(engine) as session:
        return q.fail_stale_runs(session, _now(), get_settings().run_heartbeat_timeout_s)


def run_to_json(run: TrainingRun, evaluations: list[Any] | None = None) -> dict[str, Any]:
    """A run as `kpdd runs --json` and `kpdd run show --json` print it."""
    accuracies: dict[str, float | None] = {}
    for evaluation in evaluations or []:
        for dataset, figures in (evaluation.results.get("datasets") or {}).items():
            accuracies[dataset] = figures.get("accuracy")
    return {
        "run_id": run.id,
        "state": run.state,
        "reason": run.state_reason,
        "snapshot_id": run.snapshot_id,
        "snapshot_path": run.snapshot_path,
        "config_path": run.config_path,
        "overrides": run.overrides,
        "layout": run.layout,
        "num_gpus": run.num_gpus,
        "world_size": run.world_size,
        "submitted": run.submitted,
        "worker_host": run.worker_host,
        "launcher_pid": run.launcher_pid,
        "run_dir": run.run_dir,
        "step": run.step,
        "total_steps": run.total_steps,
        "last_loss": run.last_loss,
        "tokens_per_s_per_gpu": run.tokens_per_s_per_gpu,
        "mfu": run.mfu,
        "peak_memory_bytes": run.peak_memory_bytes,
        "metrics": run.metrics,
        "final_dir": run.final_dir,
        "accuracy": accuracies,
        "evaluations": [e.id for e in evaluations or []],
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "heartbeat_at": run.heartbeat_at,
    }


def require_final_dir(run: TrainingRun) -> Path:
    if run.state != "succeeded" or not run.final_dir:
        raise RunFailure(f"run {run.id} has no final model (state {run.state}); see `kpdd run show {run.id}`")
    return Path(run.final_dir)
