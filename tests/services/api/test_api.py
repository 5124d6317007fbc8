"""`kpdd serve`'s API over real HTTP, against the suite's Postgres and Redis and a real worker."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import orjson
import redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.models import Rationale, TeacherCall, TrainingRun
from tests.services.api.conftest import TOKEN, Api
from tests.services.generation.conftest import gsm8k_subset
from tests.workers.cluster import Cluster, assert_exact


def _error(response, status: int, words: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and words in error["message"], error


def test_tokens_guard_changes_and_reads(cluster: Cluster, serve: Callable[..., Api]) -> None:
    closed = serve()  # no token configured: fail closed
    _error(closed.request("POST", "/api/jobs/1/cancel"), 403, "KPDD_API_TOKEN")
    _error(closed.request("GET", "/api/jobs", token=None), 403, "KPDD_API_OPEN_READS")

    api = serve(KPDD_API_TOKEN=TOKEN)
    _error(api.request("GET", "/api/jobs", token=None), 401, "Authorization: Bearer")
    _error(api.request("POST", "/api/jobs/1/cancel", token="wrong-token"), 401, "API token")
    assert api.request("GET", "/api/jobs").status_code == 200

    reads = serve(KPDD_API_TOKEN=TOKEN, KPDD_API_OPEN_READS="true")
    assert reads.request("GET", "/api/jobs", token=None).json()["total"] == 0
    _error(reads.request("POST", "/api/jobs/1/cancel", token=None), 401, "API token")
    assert reads.request("GET", "/openapi.json", token=None).json()["info"]["title"] == "kpdd"


def test_bad_requests_get_one_error_shape(
    cluster: Cluster, serve: Callable[..., Api], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.jsonl").write_text('{"question": "q", "answer": "1"}\n')
    api = serve(KPDD_API_TOKEN=TOKEN, KPDD_API_MAX_UPLOAD_MB="1", KPDD_API_INGEST_ROOT=str(root))
    _error(api.request("GET", "/api/jobs/999"), 404, "no generation job 999")
    _error(api.request("GET", "/api/runs/999"), 404, "no training run 999")
    _error(api.request("GET", "/api/snapshots/nope/files/manifest.json"), 404, "no snapshot 'nope'")
    _error(api.request("GET", "/api/nowhere"), 404, "openapi.json")
    _error(api.request("POST", "/api/jobs", json={"corpus": "g", "teachers": []}), 422, "teachers")
    _error(
        api.request("POST", "/api/jobs", json={"corpus": "g", "teachers": ["sim:gold"], "samples": 0}),
        422,
        "samples",
    )
    _error(
        api.request("POST", "/api/jobs", json={"corpus": "g", "teachers": ["sim:gold"], "colour": 1}),
        422,
        "colour",
    )
    _error(
        api.request("POST", "/api/jobs", json={"corpus": "g", "teachers": ["sim:gold"], "transport": "x"}),
        422,
        "transport",
    )
    _error(api.request("GET", "/api/jobs?limit=100000"), 422, "limit")
    body = b'{"question": "x", "answer": "1"}\n' * 40_000  # 1.3 MB > 1 MiB
    _error(api.request("PUT", "/api/corpora/big/upload?format=jsonl", content=body), 413, "at most")
    traversal = {"format": "jsonl", "path": "../secret.jsonl"}
    _error(api.request("POST", "/api/corpora/x/ingest", json=traversal), 403, "outside the ingest root")
    _error(
        api.request("PUT", "/api/corpora/x/upload?format=nope", content=b"{}\n"), 400, "unknown corpus format"
    )
    bad = b'{"question": "fine", "answer": "1"}\n{"question": "", "answer": "2"}\n'
    _error(api.request("PUT", "/api/corpora/bad/upload?format=jsonl", content=bad), 400, "line 2")
    assert api.request("GET", "/api/corpora").json()["total"] == 0  # nothing half-written
    # Without a broker the API cannot queue: 409, nothing recorded.
    cluster.monkeypatch.delenv("KPDD_BROKER_URL")
    nobroker = serve(KPDD_API_TOKEN=TOKEN)
    _error(
        nobroker.request("POST", "/api/jobs", json={"corpus": "g", "teachers": ["sim:gold"]}),
        409,
        "KPDD_BROKER_URL",
    )
    assert nobroker.request("GET", "/api/jobs").json()["total"] == 0


def test_a_job_through_the_api_end_to_end(
    cluster: Cluster, serve: Callable[..., Api], datasets_dir: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    secret = "sk-test-NEVER-SHOWN-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    api = serve(KPDD_API_TOKEN=TOKEN)
    path = gsm8k_subset(datasets_dir, cluster.tmp, 12)
    uploaded = api.request("PUT", "/api/corpora/g/upload?format=gsm8k&split=train", content=path.read_bytes())
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["inserted"] == 12
    assert api.request("GET", "/api/corpora").json()["items"][0]["problems"] == 12

    url = cluster.simulator(datasets_dir)
    cluster.start_worker()
    created = api.request(
        "POST",
        "/api/jobs",
        json={"corpus": "g", "teachers": [f"sim:gold@{url}"], "mode": "both", "chunk_size": 5},
    )
    assert created.status_code == 201, created.text
    job = created.json()["job_id"]
    assert created.json() == {"job_id": job, "problems": 12, "chunks": 3, "execution": "queued"}
    assert cluster.wait(job) == "completed"
    assert_exact(cluster, job, problems=12, per_problem=2)

    status = api.request("GET", f"/api/jobs/{job}").json()
    _, out = cluster.kpdd("status", str(job), "--json")
    cli = orjson.loads(out)
    volatile = ("rate_rationales_per_s", "eta_s")  # read at another moment
    assert {k: v for k, v in status.items() if k not in volatile} == {
        k: v for k, v in cli.items() if k not in volatile
    }
    engine = create_engine(cluster.db_url)
    with Session(engine) as session:
        valid = session.scalar(select(func.count()).where(Rationale.verdict == "valid"))
        calls = session.scalar(select(func.count()).select_from(TeacherCall))
    assert sum(r["valid"] for r in status["rationales"]) == valid

    page = api.request("GET", "/api/jobs?limit=1&offset=0").json()
    assert page["total"] == 1 and page["items"][0]["job_id"] == job and page["next_offset"] is None
    _error(api.request("POST", f"/api/jobs/{job}/cancel"), 409, "already completed")

    metrics = api.request("GET", "/metrics").text
    recorded = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("kpdd_teacher_calls_total{")
    )
    assert recorded == calls
    assert 'kpdd_rationales_total{mode="pot",verdict="valid"}' in metrics
    assert 'kpdd_queue_depth{queue="kpdd.generation"} 0.0' in metrics

    made = api.request("POST", "/api/snapshots", json={"name": "snap-1", "jobs": [job], "format": "jsonl"})
    assert made.status_code == 201, made.text
    snapshot_id = made.json()["snapshot_id"]
    _error(api.request("POST", "/api/snapshots", json={"name": "snap-1"}), 409, "already exists")
    _error(api.request("POST", "/api/snapshots", json={"name": "../up"}), 422, "name")
    listed = api.request("GET", "/api/snapshots").json()
    assert listed["total"] == 1 and listed["items"][0]["snapshot_id"] == snapshot_id
    manifest = api.request("GET", f"/api/snapshots/{snapshot_id}").json()["manifest"]
    assert api.request("GET", "/api/snapshots/snap-1").json()["snapshot_id"] == snapshot_id  # by folder
    for entry in manifest["files"]:
        data = api.request("GET", f"/api/snapshots/{snapshot_id}/files/{entry['path']}").content
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
    # A client that does not normalise the path (httpx would resolve the dots itself).
    escape = f"/api/snapshots/{snapshot_id}/files/..%2F..%2Fetc%2Fpasswd"
    _error(api.request("GET", escape), 404, "has no file")

    queued = api.request("POST", "/api/runs", json={"snapshot": snapshot_id, "config": "tiny-llama"})
    assert queued.status_code == 201, queued.text
    run_id = queued.json()["run_id"]
    assert redis.Redis.from_url(cluster.redis.url()).llen("kpdd.training") == 1  # queued, not run here
    runs = api.request("GET", "/api/runs").json()
    assert runs["total"] == 1 and runs["items"][0]["state"] == "queued"
    _error(
        api.request("POST", "/api/runs", json={"snapshot": snapshot_id, "config": "huge"}), 422, "tiny-llama"
    )
    assert api.request("POST", f"/api/runs/{run_id}/cancel").json()["state"] == "cancelled"
    with Session(engine) as session:
        assert session.get(TrainingRun, run_id).state == "cancelled"  # type: ignore[union-attr]
    engine.dispose()

    assert all(secret not in body for body in api.bodies)
