"""The whole stack, for real, in containers: docker-compose.yml with tests/stack/compose.test.yml.

Images are built here with no registry (scripts/stack/build_images.sh: a Debian base image from
debootstrap, cached between runs; the project installed from wheels built on the host; Postgres
and Redis from Debian's packages). Every service runs on the host network on loopback ports of its
own. The test ingests a GSM8K subset and runs a generation job through the API, carried out by two
worker containers against a teacher simulator container; kills one worker container mid-job
(`docker kill`) and checks exact counts in Postgres; then runs hostile programs through a worker
container's sandbox, as the worker runs it, with a provider key in that container's environment.

Needs root, docker.io, docker-compose and debootstrap (scripts/setup.sh installs them). When the
engine cannot start, the test fails with the reason: it never skips.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.models import GenerationJob, JobProblem, Rationale
from tests.services.generation.conftest import gsm8k_subset
from tests.stack.dockerd import PRIVATE_SOCKET, REPO, Compose, docker_engine, exclusive
from tests.workers.cluster import assert_exact
from tests.workers.secret_probes import KEY_PREFIX, make_key, probe_programs

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "test-artifacts" / "stack"
PROBLEMS = 48
SERVICES = ["postgres", "redis", "teacher-sim", "api", "worker", "flower"]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@dataclass
class Stack:
    compose: Compose
    ports: dict[str, int]
    token: str
    key: str
    db_url: str

    def api(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        url = f"http://127.0.0.1:{self.ports['api']}{path}"
        return httpx.request(method, url, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]

    # What tests.workers.cluster.assert_exact reads from a cluster: db_url and job_counts().
    def job_counts(self, job_id: int) -> dict[str, int]:
        engine = create_engine(self.db_url)
        with Session(engine) as session:
            rows = session.execute(
                select(JobProblem.state, func.count())
                .where(JobProblem.job_id == job_id)
                .group_by(JobProblem.state)
            ).all()
        engine.dispose()
        return {state: count for state, count in rows}

    def scalar(self, query: object) -> object:
        engine = create_engine(self.db_url)
        with Session(engine) as session:
            value = session.scalar(query)  # type: ignore[call-overload]
        engine.dispose()
        return value

    def running_workers(self) -> list[str]:
        ids = self.compose.containers("worker")
        running = [self.compose.docker("inspect", "-f", "{{.State.Running}}", cid).strip() for cid in ids]
        return [cid for cid, state in zip(ids, running, strict=True) if state == "true"]


@pytest.fixture(scope="module")
def stack(datasets_dir: Path) -> Iterator[Stack]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with (
        exclusive(PRIVATE_SOCKET.parent / "stack-test.lock"),
        docker_engine(ARTIFACTS / "dockerd.log") as host,
    ):
        names = ["pg", "redis", "api", "flower", "sim"]
        ports = dict(zip(names, _free_ports(len(names)), strict=True))
        token, key = secrets.token_hex(16), make_key()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KPDD_")},
            "DOCKER_HOST": host,
            "KPDD_STACK_IMAGE": "kpdd-stack/kpdd:test",
            "KPDD_STACK_PG_IMAGE": "kpdd-stack/postgres:test",
            "KPDD_STACK_REDIS_IMAGE": "kpdd-stack/redis:test",
            "KPDD_DATASETS_DIR": str(datasets_dir),
            **{f"KPDD_STACK_{name.upper()}_PORT": str(port) for name, port in ports.items()},
            # Secrets reach the containers through the environment only.
            "KPDD_API_TOKEN": token,
            "OPENAI_API_KEY": key,
        }
        started = time.monotonic()
        with (ARTIFACTS / "build.log").open("w") as log:
            built = subprocess.run(
                ["bash", str(REPO / "scripts" / "stack" / "build_images.sh")],
                check=False,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=1200,
            )
        build_log = (ARTIFACTS / "build.log").read_text(errors="replace")
        assert built.returncode == 0, f"building the images failed:\n{build_log[-3000:]}"
        print(f"images built in {time.monotonic() - started:.0f} s")

        compose = Compose("kpdd-stack-test", env)
        # A killed run's leftovers first.
        compose.run("down", "-v", "--remove-orphans", "--timeout", "5", check=False)
        try:
            compose.run("up", "-d", "--no-build", "--scale", "worker=2", *SERVICES, timeout=600)
            compose.wait_healthy(SERVICES)
            db_url = f"postgresql+psycopg://kpdd:kpdd@127.0.0.1:{ports['pg']}/kpdd"
            yield Stack(compose, ports, token, key, db_url)
        finally:
            (ARTIFACTS / "compose.log").write_text(compose.logs())
            compose.run("down", "-v", "--remove-orphans", "--timeout", "10", check=False)


def test_a_job_through_the_api_survives_a_killed_worker_container(
    stack: Stack, datasets_dir: Path, tmp_path: Path
) -> None:
    workers = stack.running_workers()
    assert len(workers) == 2
    subset = gsm8k_subset(datasets_dir, tmp_path, PROBLEMS)
    uploaded = stack.api("PUT", "/api/corpora/g/upload?format=gsm8k&split=train", content=subset.read_bytes())
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["inserted"] == PROBLEMS

    teacher = f"sim:gold@http://127.0.0.1:{stack.ports['sim']}"
    body = {"corpus": "g", "teachers": [teacher], "mode": "both", "chunk_size": 3}
    created = stack.api("POST", "/api/jobs", json=body)
    assert created.status_code == 201, created.text
    job = created.json()["job_id"]
    assert created.json()["execution"] == "queued"

    deadline = time.monotonic() + 120
    while int(stack.scalar(select(func.count()).select_from(Rationale)) or 0) < 6:  # type: ignore[call-overload]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no progress: {stack.job_counts(job)}\n{stack.compose.logs('worker')[-4000:]}"
            )
        time.sleep(0.2)
    stack.compose.docker("kill", workers[0])
    assert stack.job_counts(job).get("pending", 0) > 0, "the job ended before the kill: make it longer"

    deadline = time.monotonic() + 300
    while stack.scalar(select(GenerationJob.status).where(GenerationJob.id == job)) in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job} not done: {stack.job_counts(job)}"
        time.sleep(1)
    status = stack.api("GET", f"/api/jobs/{job}").json()
    assert status["status"] == "completed", status
    # Every problem terminal, one rationale per identity, one ledger row per distinct request.
    assert_exact(stack, job, problems=PROBLEMS, per_problem=2)  # type: ignore[arg-type]
    assert stack.job_counts(job) == {"done": PROBLEMS}
    # The simulator answers gold: every CoT answer matched and every PoT program ran and matched
    # in the containerised sandbox.
    valid = stack.scalar(select(func.count()).where(Rationale.verdict == "valid"))
    assert valid == 2 * PROBLEMS

    metrics = stack.api("GET", "/metrics")
    assert metrics.status_code == 200 and "kpdd_rationales" in metrics.text
    assert stack.key not in metrics.text and stack.key not in stack.compose.logs()


DRIVER = """
import json, sys
from services.config import get_settings
from services.validation.sandbox import Sandbox
programs = json.load(sys.stdin)
# As the worker builds it (services/generation/execute.py), strict as in a worker.
with Sandbox(parallelism=get_settings().sandbox_workers, strict=True) as sandbox:
    report = sandbox.isolation.as_dict()
    results = sandbox.run_many(list(programs.values()))
print(json.dumps({"isolation": report, "results": dict(zip(programs, [r.as_dict() for r in results]))}))
"""

OUTSIDE = [
    "/data/pwned", "/data/snapshots/pwned", "/datasets/pwned", "/tmp/pwned", "/var/tmp/pwned",
    "/dev/shm/pwned", "/root/pwned", "/home/kpdd/pwned", "/opt/kpdd/pwned", "/etc/pwned", "/pwned",
]  # fmt: skip

WRITE_PROBE = f"""
import os
written = []
for path in {OUTSIDE!r} + [os.path.join(os.getcwd(), '..', 'pwned')]:
    try:
        with open(path, 'w') as f:
            f.write('x')
        written.append(path)
    except OSError:
        pass
with open('mine', 'w') as f:  # its own working directory: allowed, removed after the program
    f.write('x')
ans = 'written=' + repr(written)
"""

NETWORK_PROBE = """
import socket
reached = []
for port in PORTS:
    try:
        socket.create_connection(('127.0.0.1', port), timeout=1).close()
        reached.append(port)
    except OSError:
        pass
ans = 'reached=' + repr(reached)
"""


def test_the_worker_container_sandbox_holds_against_hostile_programs(stack: Stack) -> None:
    worker = stack.running_workers()[0]
    listening = sorted(stack.ports.values())
    # Controls: the worker container itself reaches every service on loopback and holds the key.
    reach = f"import socket\nfor p in {listening}:\n    socket.create_connection(('127.0.0.1', p), 2).close()"
    stack.compose.docker("exec", worker, "python3", "-c", reach)
    assert stack.key in stack.compose.docker("exec", worker, "cat", "/proc/1/environ")

    programs = probe_programs("/home/kpdd")
    programs["write_outside"] = WRITE_PROBE
    programs["network"] = NETWORK_PROBE.replace("PORTS", repr(listening))
    stdin = json.dumps(programs)
    out = stack.compose.docker("exec", "-i", worker, "python3", "-c", DRIVER, stdin=stdin, timeout=300)
    (ARTIFACTS / "sandbox-probes.json").write_text(out)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["isolation"]["root"] and report["isolation"]["network"] != "none", report["isolation"]
    results = report["results"]
    answers = {name: (result["answer"] or {}).get("value", "") for name, result in results.items()}

    # No provider key readable from any process, file, descriptor or memory the program reaches.
    secret_part = stack.key.removeprefix(KEY_PREFIX)
    assert secret_part not in out
    for name in set(programs) - {"write_outside", "network"}:
        assert results[name]["kind"] == "ok", (name, results[name])
        assert f"probe={name}" in answers[name] and "found=[]" in answers[name], (name, answers[name])
    # No network: not one of the services the container itself reaches.
    assert answers["network"] == "reached=[]", results["network"]
    # No file written outside the program's own working directory, seen from inside and out.
    assert answers["write_outside"] == "written=[]", results["write_outside"]
    look = f"ls -d {' '.join(OUTSIDE)} 2>/dev/null"
    left = stack.compose.docker("exec", worker, "sh", "-c", look, check=False)
    assert left.strip() == ""
