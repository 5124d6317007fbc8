"""The supervision of a launch, against real child processes that behave as the launcher does
(write metrics and status, exit with a code or die by a signal), and hostfile parsing."""

from __future__ import annotations

import json
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from services.errors import BadInputError
from services.training import launch


def _child(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, os, sys, time
            from pathlib import Path
            run = Path(sys.argv[1])
            def metric(step, loss):
                with (run / "metrics.jsonl").open("a") as fh:
                    fh.write(json.dumps({"step": step, "loss": loss, "tokens_per_s_per_gpu": 100.0 * step,
                                         "mfu": None, "peak_memory_bytes": 1 << 20}) + "\\n")
            def status(state, step, message=None, final_dir=None):
                tmp = run / "status.json.tmp"
                tmp.write_text(json.dumps({"state": state, "step": step, "total_steps": 3,
                                           "message": message, "final_dir": final_dir}))
                os.replace(tmp, run / "status.json")
            """
        )
        + textwrap.dedent(body)
    )
    return [sys.executable, str(script), str(tmp_path)]


def _supervise(argv: list[str], run_dir: Path, stop: list[str | None] | None = None) -> launch.Outcome:
    seen: list[int] = []
    return launch.supervise(
        argv,
        run_dir,
        on_start=seen.append,
        on_progress=lambda progress: None,
        should_stop=lambda: (stop or [None])[0],
        interval_s=0.05,
    )


def test_a_run_that_reports_success_succeeds_with_its_metrics(tmp_path: Path) -> None:
    argv = _child(
        tmp_path,
        """
        for step, loss in ((1, 3.0), (2, 2.0), (3, 1.5)):
            metric(step, loss)
        status("succeeded", 3, final_dir=str(run / "final"))
        """,
    )
    outcome = _supervise(argv, tmp_path)
    assert outcome.state == "succeeded" and outcome.reason is None
    assert outcome.progress.step == 3 and outcome.progress.total_steps == 3
    assert outcome.progress.first_loss == 3.0 and outcome.progress.min_loss == 1.5
    assert outcome.progress.last["tokens_per_s_per_gpu"] == 300.0
    assert outcome.progress.status["final_dir"] == str(tmp_path / "final")


def test_a_failing_run_reports_its_message_and_the_log_tail(tmp_path: Path) -> None:
    argv = _child(
        tmp_path,
        """
        metric(1, 3.0)
        status("failed", 1, message="RuntimeError: out of memory")
        print("Traceback (most recent call last): boom", flush=True)
        sys.exit(1)
        """,
    )
    outcome = _supervise(argv, tmp_path)
    assert outcome.state == "failed"
    assert "training failed at step 1: RuntimeError: out of memory" in (outcome.reason or "")
    assert "Traceback (most recent call last): boom" in (outcome.reason or "")


def test_a_launcher_killed_by_a_signal_fails_with_the_signal(tmp_path: Path) -> None:
    argv = _child(
        tmp_path,
        """
        metric(1, 3.0)
        status("running", 1)
        os.kill(os.getpid(), 9)
        """,
    )
    outcome = _supervise(argv, tmp_path)
    assert outcome.state == "failed"
    assert f"killed by signal {int(signal.SIGKILL)} at step 1" in (outcome.reason or "")


def test_exit_zero_without_success_is_not_success(tmp_path: Path) -> None:
    outcome = _supervise(_child(tmp_path, "status('running', 2)\n"), tmp_path)
    assert outcome.state == "failed"
    assert "did not report success (status: running)" in (outcome.reason or "")


def test_a_cancelled_run_stops_the_whole_process_group(tmp_path: Path) -> None:
    argv = _child(
        tmp_path,
        """
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        (run / "grandchild.pid").write_text(str(child.pid))
        time.sleep(600)
        """,
    )

    def stop_when_started() -> str | None:
        return "cancelled by test" if (tmp_path / "grandchild.pid").exists() else None

    outcome = launch.supervise(
        argv,
        tmp_path,
        on_start=lambda pid: None,
        on_progress=lambda progress: None,
        should_stop=stop_when_started,
        interval_s=0.05,
    )
    assert outcome.state == "cancelled" and outcome.reason == "cancelled by test"
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    assert not Path(f"/proc/{grandchild}").exists() or ") Z " in Path(f"/proc/{grandchild}/stat").read_text()


def test_metrics_reader_waits_for_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    reader = launch.MetricsReader(path)
    progress = launch.Progress()
    path.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + '{"step": 2, "lo')
    assert reader.read(progress) and progress.step == 1
    with path.open("a") as fh:
        fh.write('ss": 1.0}\n')
    assert reader.read(progress) and progress.step == 2 and progress.min_loss == 1.0


def test_hostfile_slots_add_up_and_bad_lines_are_named() -> None:
    assert launch.hostfile_slots("# nodes\nnode-1 slots=8\nnode-2 slots=8  # second\n", "hosts") == 16
    with pytest.raises(BadInputError, match=r"hosts, line 2: expected 'HOSTNAME slots=N'"):
        launch.hostfile_slots("node-1 slots=8\nnode-2 8\n", "hosts")
    with pytest.raises(BadInputError, match="no 'HOSTNAME slots=N' line"):
        launch.hostfile_slots("# empty\n", "hosts")


def test_launcher_command_uses_gpus_or_the_hostfile(tmp_path: Path) -> None:
    local = launch.launcher_command(tmp_path, num_gpus=2, hostfile=None, resume="auto", master_port=29500)
    assert local[1:3] == ["-m", "deepspeed.launcher.runner"]
    assert local[local.index("--num_gpus") + 1] == "2" and "--hostfile" not in local
    assert local[-6:] == ["--module", "training.train", "--run-dir", str(tmp_path), "--resume", "auto"]
    hosts = launch.launcher_command(
        tmp_path, num_gpus=8, hostfile=tmp_path / "hosts", resume="never", master_port=29500
    )
    assert hosts[hosts.index("--hostfile") + 1] == str(tmp_path / "hosts") and "--num_gpus" not in hosts
