"""`kpdd train`, `runs`, `run show|cancel`: student training runs.

`kpdd train` records the run and, by default, prepares and launches it here, following it until
it ends (the DeepSpeed launcher is a child process; Ctrl-C stops it and marks the run
cancelled). With `--submit` it queues the run on the Celery `training` queue instead and prints
its id: a `kpdd worker --queues training` on a GPU host takes it. The logic is in
`services.training`; this module parses, prints and maps nothing but arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.cli.common import database_engine, print_json
from services.config import get_settings
from services.errors import BadInputError, ConfigError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from services.training import launch

# The training services (pyarrow through the snapshot reader), SQLAlchemy and rich are imported
# inside the handlers, so building the parser (`kpdd train --help`) stays light.


def _datasets(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.add_parser(
        "train",
        help="train a student on a snapshot with DeepSpeed",
        description="Verify a snapshot, record a training run and launch DeepSpeed on it (one "
        "process per GPU, several nodes with --hostfile), or queue it with --submit.",
    )
    train.add_argument("--snapshot", type=Path, required=True, help="snapshot directory (kpdd export)")
    train.add_argument(
        "--config",
        type=Path,
        required=True,
        help="training config (YAML), e.g. training/configs/tiny-llama.yaml",
    )
    train.add_argument("--num-gpus", type=int, default=1, help="processes (GPUs) on this node (default 1)")
    train.add_argument("--hostfile", type=Path, help="DeepSpeed hostfile ('HOST slots=N' per node)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    train.add_argument(
        "--resume",
        choices=("auto", "never"),
        default="never",
        help="auto: continue from the run directory's last checkpoint",
    )
    train.add_argument("--run-dir", type=Path, help="run directory (default KPDD_DATA_DIR/runs/run-ID)")
    train.add_argument(
        "--eval",
        dest="eval_datasets",
        type=_datasets,
        default=[],
        metavar="DATASETS",
        help="evaluate the final model on these sets afterwards, e.g. gsm8k-test,svamp",
    )
    train.add_argument("--eval-limit", type=int, help="items per evaluation set (default all)")
    train.add_argument(
        "--eval-mode",
        choices=("cot", "pot"),
        help="solution to evaluate (needed when the snapshot has both CoT and PoT)",
    )
    train.add_argument("--submit", action="store_true", help="queue on the Celery training queue")
    train.add_argument("--json", action="store_true", help="print the run as one JSON document")
    train.set_defaults(handler=run_train)

    runs = sub.add_parser("runs", help="list training runs")
    runs.add_argument("--limit", type=int, default=50, help="most recent runs to list")
    runs.add_argument("--json", action="store_true", help="print one JSON document")
    runs.set_defaults(handler=run_runs)

    run = sub.add_parser("run", help="show or cancel one training run")
    actions = run.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="a run's state, metrics and evaluations")
    show.add_argument("run_id", type=int)
    show.add_argument("--json", action="store_true", help="print one JSON document")
    show.set_defaults(handler=run_show)
    cancel = actions.add_parser("cancel", help="stop a queued or running run")
    cancel.add_argument("run_id", type=int)
    cancel.set_defaults(handler=run_cancel)


def run_train(args: argparse.Namespace) -> int:
    from services.training.runs import TrainRequest, create_run, execute_run, submit_new_run

    settings = get_settings()
    if args.submit and not settings.broker_url:
        raise ConfigError("--submit needs a broker: set KPDD_BROKER_URL=redis://host:6379/0")
    if args.submit and settings.is_embedded:
        raise ConfigError(
            "--submit needs a database the worker shares: set KPDD_DATABASE_URL=postgresql+psycopg://..."
        )
    if args.eval_limit is not None and args.eval_limit < 1:
        raise BadInputError(f"--eval-limit: must be at least 1, got {args.eval_limit}")
    engine = database_engine(settings)
    request = TrainRequest(
        snapshot=args.snapshot,
        config=args.config,
        overrides=args.overrides,
        num_gpus=args.num_gpus,
        hostfile=args.hostfile,
        resume=args.resume,
        run_dir=args.run_dir,
        eval_datasets=args.eval_datasets,
        eval_limit=args.eval_limit,
        eval_mode=args.eval_mode,
    )
    if args.submit:
        run_id = submit_new_run(
            engine, request, data_dir=settings.data_dir, broker_url=str(settings.broker_url)
        )
        _say(args, f"run {run_id} queued on the training queue; follow it with `kpdd run show {run_id}`")
    else:
        run_id = create_run(engine, request, data_dir=settings.data_dir, submitted=False)
        _say(args, f"run {run_id}: preparing (run directory and log: `kpdd run show {run_id}`)")
        with ProgressDisplay(run_id) as display:
            execute_run(engine, run_id, echo=True, watch=display.update)
    return _show(engine, run_id, args.json, exit_on_failure=not args.submit)


class ProgressDisplay:
    """A run's progress while `kpdd train` follows it: a bar with ETA on a terminal, otherwise
    one line per logged step (logs, CI), on stderr."""

    def __init__(self, run_id: int) -> None:
        from rich.console import Console

        self.run_id = run_id
        self.console = Console(stderr=True)
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.last_step = -1

    def __enter__(self) -> ProgressDisplay:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if self.console.is_terminal:
            self.bar = Progress(
                TextColumn(f"run {self.run_id}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps {task.fields[figures]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.bar.__enter__()
        return self

    def update(self, progress: launch.Progress) -> None:
        if progress.step == self.last_step or not progress.last:
            return
        self.last_step = progress.step
        last = progress.last
        speed = last.get("tokens_per_s_per_gpu") or 0
        figures = f"loss {last.get('loss', float('nan')):.4f}, {speed:,.0f} tok/s/gpu"
        if self.bar is None:
            total = f"/{progress.total_steps}" if progress.total_steps else ""
            self.console.print(f"run {self.run_id}: step {progress.step}{total}, {figures}", highlight=False)
            return
        if self.task is None:
            self.task = self.bar.add_task("train", total=progress.total_steps, figures="")
        self.bar.update(self.task, completed=progress.step, total=progress.total_steps, figures=figures)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _say(args: argparse.Namespace, text: str) -> None:
    print(text, file=sys.stderr if args.json else sys.stdout)


def run_runs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from db.engine import session_scope
    from db.queries import training as q
    from services.training.runs import reap_stale, run_to_json

    engine = database_engine()
    reap_stale(engine)
    with session_scope(engine) as session:
        runs = q.list_runs(session, args.limit)
        evaluations = q.evaluations_of_runs(session, [r.id for r in runs])
        documents = [run_to_json(r, evaluations[r.id]) for r in runs]
    if args.json:
        print_json({"runs": documents})
        return 0
    table = Table(show_header=True)
    for column in ("run", "state", "layout", "step", "loss", "tok/s/gpu", "MFU", "accuracy", "snapshot"):
        table.add_column(column, justify="left" if column in ("state", "layout", "snapshot") else "right")
    for doc in documents:
        table.add_row(
            str(doc["run_id"]),
            doc["state"],
            doc["layout"] or "-",
            _steps(doc),
            _num(doc["last_loss"], ".4f"),
            _num(doc["tokens_per_s_per_gpu"], ",.0f"),
            _pct(doc["mfu"]),
            _accuracies(doc["accuracy"]),
            doc["snapshot_id"],
        )
    Console().print(table)
    return 0


def _steps(doc: dict[str, Any]) -> str:
    return f"{doc['step']}/{doc['total_steps']}" if doc["total_steps"] else str(doc["step"])


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _accuracies(accuracy: dict[str, float | None]) -> str:
    return " ".join(f"{name} {_pct(value)}" for name, value in accuracy.items()) or "-"


def run_show(args: argparse.Namespace) -> int:
    from services.training.runs import reap_stale

    engine = database_engine()
    reap_stale(engine)
    return _show(engine, args.run_id, args.json, exit_on_failure=False)


def _show(engine: Any, run_id: int, as_json: bool, *, exit_on_failure: bool) -> int:
    from db.engine import session_scope
    from db.queries import training as q
    from services.training.runs import run_to_json

    with session_scope(engine) as session:
        run = q.get_run(session, run_id)
        if run is None:
            raise BadInputError(f"no training run {run_id} (see `kpdd runs`)")
        evaluations = q.evaluations_of_runs(session, [run_id])[run_id]
        doc = run_to_json(run, evaluations)
        eval_docs = [
            {
                "evaluation_id": e.id,
                "state": e.state,
                "reason": e.state_reason,
                "out_dir": e.out_dir,
                "accuracy": e.accuracy,
                "results": e.results,
            }
            for e in evaluations
        ]
    doc["evaluation_results"] = eval_docs
    if as_json:
        print_json(doc)
    else:
        _print_run(doc)
    return 1 if exit_on_failure and doc["state"] != "succeeded" else 0


def _print_run(doc: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    console.print(f"[bold]run {doc['run_id']}[/bold]: {doc['state']}", highlight=False)
    if doc["reason"]:
        console.print(f"  reason: {doc['reason']}", highlight=False, markup=False)
    lines = [
        ("snapshot", f"{doc['snapshot_id']} ({doc['snapshot_path']})"),
        ("config", f"{doc['config_path']} {' '.join('--set ' + o for o in doc['overrides'])}".strip()),
        ("layout", doc["layout"] or "-"),
        ("processes", f"{doc['world_size']} ({doc['num_gpus']} per node)"),
        ("run dir", doc["run_dir"]),
        ("step", _steps(doc)),
        ("loss", f"{_num(doc['last_loss'], '.4f')} (first {_num(doc['metrics'].get('first_loss'), '.4f')})"),
        ("tokens/s per GPU", _num(doc["tokens_per_s_per_gpu"], ",.0f")),
        ("MFU", _pct(doc["mfu"])),
        ("peak memory", _num((doc["peak_memory_bytes"] or 0) / 2**20 or None, ",.0f") + " MiB"),
        ("final model", doc["final_dir"] or "-"),
    ]
    for label, value in lines:
        console.print(f"  {label + ':':<18}{value}", highlight=False, markup=False)
    for evaluation in doc["evaluation_results"]:
        datasets = (evaluation["results"] or {}).get("datasets") or {}
        figures = ", ".join(
            f"{name} {_pct(f.get('accuracy'))} ({f.get('correct')}/{f.get('n')})"
            for name, f in datasets.items()
        )
        console.print(
            f"  evaluation {evaluation['evaluation_id']}: {evaluation['state']} {figures}",
            highlight=False,
            markup=False,
        )


def run_cancel(args: argparse.Namespace) -> int:
    from services.training.runs import cancel_run

    engine = database_engine()
    if cancel_run(engine, args.run_id):
        print(f"run {args.run_id}: cancelled (a running launcher stops within seconds)")
        return 0
    print(f"run {args.run_id} had already ended; nothing to cancel")
    return 0
