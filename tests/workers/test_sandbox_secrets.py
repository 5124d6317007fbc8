"""A provider key in a worker's environment never reaches the PoT programs it judges.

The worker holds `OPENAI_API_KEY` (in its environment, in its teacher client, and in a
world-readable `.env` in its working directory, as a developer's checkout would). Hostile
programs (`secret_probes.py`) hunt for it every way a program can: its own environment,
`/proc/*/environ` and `cmdline` (every pid, listed or guessed), the parent's memory
(`/proc/<pid>/mem`, `process_vm_readv`), its own memory (a copy of the fork-server's), files (the
worker's directory, `/etc`, a walk of the whole tree), inherited descriptors 0..1024, ptrace and
`pidfd_getfd`, and sockets to anything listening. Run the way the worker runs them:

- through a real `kpdd worker` (Celery, prefork, strict sandbox), whose teacher answers every
  problem with one of the probes; then nothing stored (every table) and nothing logged holds it;
- through the worker runtime's own sandbox in a child process holding the key, with and without
  pivot_root (Docker's default seccomp profile denies it): every probe's full result (answer,
  output, error) is free of it.

A first test shows the probes find the key when nothing stands in their way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import create_engine, text

from db.models import Base
from services.kpdd.formatting import format_core_question, format_solution, format_solving_info
from services.kpdd.records import Solution
from tests.workers.cluster import REPO, Cluster, generate, ingest
from tests.workers.secret_probes import PROBES, make_key, probe_programs

PYTHON = sys.executable


@pytest.fixture
def key() -> str:
    return make_key()


@pytest.fixture
def worker_dir(key: str) -> Iterator[Path]:
    """The worker's working directory, outside /tmp (which the sandbox hides anyway), holding a
    world-readable `.env` with the key, as a checkout often does."""
    path = Path(tempfile.mkdtemp(prefix="kpdd-worker-", dir="/var/tmp"))
    path.chmod(0o755)
    (path / ".env").write_text(f"OPENAI_API_KEY={key}\n")
    (path / ".env").chmod(0o644)
    (path / "config.toml").write_text(f'[openai]\napi_key = "{key}"\n')
    (path / "config.toml").chmod(0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _leaks(key: str, text_: str) -> bool:
    """The key, or its random part alone, anywhere in `text_`."""
    return key in text_ or key[-32:] in text_


def _report(answer: str) -> dict[str, Any]:
    """`probe=NAME tried=N read=M found=[...]` -> its fields."""
    fields = dict(part.split("=", 1) for part in answer.split(" ", 3))
    return {**fields, "tried": int(fields["tried"]), "read": int(fields["read"])}


# --- the probes work ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["environ", "proc_environ", "files", "own_memory"])
def test_probes_find_the_key_when_nothing_stops_them(name: str, key: str, worker_dir: Path) -> None:
    program = probe_programs(str(worker_dir))[name] + "\nprint('ANSWER', ans)\n"
    done = subprocess.run(
        [PYTHON, "-c", program],
        env={**os.environ, "OPENAI_API_KEY": key},
        cwd=worker_dir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"'{key}'" in done.stdout, done.stdout[-2000:]  # (it may find other processes' keys too)


# --- the worker runtime's sandbox, in a process holding the key ----------------------------------

WORKER_SANDBOX = """
import json, sys
from services.config import get_settings
from workers.runtime import WorkerRuntime

programs = json.loads(sys.stdin.read())
runtime = WorkerRuntime.from_settings(get_settings())  # holds the key: os.environ
sandbox = runtime.generator.sandbox()
results = sandbox.run_many(list(programs.values()))
out = {
    "isolation": sandbox.isolation.as_dict(),
    "results": {
        name: {"kind": r.kind.value, "answer": r.answer and r.answer.value, "stdout": r.stdout,
               "error_type": r.error_type, "error_message": r.error_message}
        for name, r in zip(programs, results)
    },
}
runtime.close()
print(json.dumps(out))
"""


@pytest.mark.parametrize("root_switch", ["pivot_root", "chroot"])
def test_the_worker_sandbox_keeps_the_key_from_every_probe(
    root_switch: str, key: str, worker_dir: Path, tmp_path: Path
) -> None:
    """`chroot`: pivot_root denied by a seccomp filter, as Docker's default profile does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPDD_")}
    env.update(
        OPENAI_API_KEY=key,
        ANTHROPIC_API_KEY=key,
        PYTHONPATH=str(REPO),
        KPDD_DATABASE_URL=f"sqlite:///{tmp_path / 'worker.sqlite3'}",
        KPDD_SANDBOX_WORKERS="4",
    )
    deny_pivot_root = [PYTHON, "-m", "tests.services.validation.restrict", "--deny", "pivot_root", "--"]
    prefix = deny_pivot_root if root_switch == "chroot" else []
    done = subprocess.run(
        [*prefix, PYTHON, "-c", WORKER_SANDBOX],
        input=json.dumps(probe_programs(str(worker_dir))),
        env=env,
        cwd=worker_dir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not _leaks(key, done.stdout + done.stderr)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["isolation"]["root_switch"] == root_switch
    results = out["results"]
    assert set(results) == set(PROBES)
    for name, result in results.items():
        assert result["kind"] == "ok", (name, result)
        report = _report(result["answer"])
        assert report["probe"] == name and report["found"] == "[]", result
        assert result["answer"] in result["stdout"], result
    # The probes did their work (a probe that ran nothing would prove nothing).
    reports = {name: _report(result["answer"]) for name, result in results.items()}
    assert reports["inherited_fds"]["tried"] == 1025
    assert reports["files"]["read"] >= 20 and reports["own_memory"]["read"] >= 20
    assert reports["proc_environ"]["tried"] >= 1000 and reports["environ"]["read"] >= 3


# --- a real `kpdd worker` --------------------------------------------------------------------------


class HostileTeacher:
    """An OpenAI-compatible endpoint answering each distinct problem, in the KPDD PoT format,
    with the next probe program (a retry of the same problem gets the same one)."""

    def __init__(self, programs: dict[str, str]) -> None:
        self.programs = list(programs.values())
        self.assigned: dict[str, int] = {}
        self.keys_seen: set[str] = set()
        self.lock = threading.Lock()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with teacher.lock:
                    teacher.keys_seen.add(self.headers.get("Authorization", ""))
                text_ = teacher.answer(body)
                reply = orjson.dumps(
                    {
                        "id": "chatcmpl-hostile",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "gold"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text_},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 100, "total_tokens": 200},
                    }
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, body: dict[str, Any]) -> str:
        question = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        with self.lock:
            index = self.assigned.setdefault(question, len(self.assigned) % len(self.programs))
        return "\n\n".join(
            [
                format_core_question("What does the worker hide?"),
                format_solving_info(["The worker holds a provider key."]),
                format_solution(Solution(program=self.programs[index])),
            ]
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _start_worker(cluster: Cluster, cwd: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`kpdd worker` as cluster.start_worker starts it, from `cwd`, with `extra_env` added."""
    log = (cluster.tmp / f"worker-{len(cluster.workers)}.log").open("wb")
    proc = subprocess.Popen(
        [PYTHON, "-m", "services.cli.main", "worker", "--concurrency", "1", "--loglevel", "INFO"],
        cwd=cwd,
        env={**os.environ, **cluster.env, "PYTHONPATH": str(REPO), **extra_env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    cluster.workers.append(proc)
    return proc


def test_hostile_programs_in_a_real_worker_never_obtain_the_key(
    cluster: Cluster, datasets_dir: Path, key: str, worker_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", key)  # `kpdd generate` checks the teacher's key is set
    programs = probe_programs(str(worker_dir))
    teacher = HostileTeacher(programs)
    try:
        ingest(cluster, datasets_dir, len(programs))
        _start_worker(cluster, worker_dir, {"OPENAI_API_KEY": key})  # (os.environ has it too)
        job = generate(
            cluster, "--teacher", f"sim:gold@{teacher.url},api_key_env=OPENAI_API_KEY", "--mode", "pot"
        )
        assert cluster.wait(job, timeout=240) == "completed"
    finally:
        teacher.close()
    assert teacher.keys_seen == {f"Bearer {key}"}  # the worker really held and used the key
    assert len(teacher.assigned) == len(programs)  # every probe was handed out

    engine = create_engine(cluster.db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT answer, verdict_kind FROM rationales")).all()
            dump = {
                table.name: [
                    str(row[0])
                    for row in conn.execute(text(f"SELECT row_to_json(t)::text FROM {table.name} t"))
                ]
                for table in Base.metadata.sorted_tables
            }
    finally:
        engine.dispose()
    # Every probe ran to its end in the sandbox and its answer was stored...
    assert len(rows) == len(programs)
    reports = {}
    for answer, verdict_kind in rows:
        assert answer is not None and answer.startswith("probe="), (answer, verdict_kind)
        report = _report(answer)
        assert report["found"] == "[]", answer
        reports[report["probe"]] = report
    assert set(reports) == set(PROBES)
    assert reports["inherited_fds"]["tried"] == 1025 and reports["files"]["read"] >= 20
    # ...and nothing anywhere in the database, nor in the worker's log, holds the key.
    for table, texts in dump.items():
        assert not any(_leaks(key, t) for t in texts), f"the key is stored in {table}"
    logs = "".join(p.read_text(errors="replace") for p in cluster.tmp.glob("worker-*.log"))
    assert f"job {job} chunk" in logs  # the log is the worker's
    assert not _leaks(key, logs)
    assert "partial isolation" not in logs  # the worker ran strict, every layer held
