"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright) against
a running API with data in Postgres: 100,001 jobs (one real generation job with faults, 100,000
bulk rows), a snapshot and a training run. The page must show the database's numbers; its
screenshot is kept in test-artifacts/dashboard.png."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import orjson
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from db.models import Evaluation, Rationale, TeacherCall, TrainingRun
from services.config import get_settings
from services.teachers.simulator.faults import FaultRates
from tests.services.api.conftest import TOKEN, Api
from tests.workers.cluster import Cluster, ingest

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _data(cluster: Cluster, datasets_dir: Path) -> tuple[int, str]:
    """One real job (run in-process, with teacher faults so failures show), a snapshot of it,
    100,000 more job rows and a training run with a loss curve and evaluation results."""
    prices = cluster.tmp / "prices.json"
    prices.write_text(json.dumps({"models": {"sim:gold": {"input": 1.0, "output": 2.0}}}))
    cluster.monkeypatch.setenv("KPDD_PRICES_FILE", str(prices))
    cluster.monkeypatch.delenv("KPDD_BROKER_URL")  # generate runs the job here, in-process
    get_settings.cache_clear()
    ingest(cluster, datasets_dir, 24)
    url = cluster.simulator(datasets_dir, seed=5, faults=FaultRates(malformed=0.15, wrong=0.15))
    code, out = cluster.kpdd(
        "generate", "--corpus", "g", "--teacher", f"sim:gold@{url}", "--mode", "both", "--json"
    )
    assert code in (0, 1), out
    job = int(orjson.loads(out)["job_id"])
    code, out = cluster.kpdd("export", "--out", str(cluster.tmp / "snap"), "--job", str(job), "--json")
    assert code == 0, out
    snapshot_id = orjson.loads(out)["snapshot_id"]
    engine = create_engine(cluster.db_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO generation_jobs (status, corpus_id, teachers, modes, stage_mode, samples, "
                "chunk_size, total_problems, params) SELECT 'completed', corpus_id, teachers, modes, "
                "stage_mode, samples, chunk_size, 0, params FROM generation_jobs, "
                "generate_series(1, 100000) WHERE id = :job"
            ),
            {"job": job},
        )
    run_dir = cluster.tmp / "run"
    run_dir.mkdir()
    lines = [
        {"step": s, "loss": 6.0 * 0.97**s} | ({"val_loss": 6.1 * 0.97**s} if s % 20 == 0 else {})
        for s in range(1, 121)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with Session(engine) as session, session.begin():
        run = TrainingRun(
            state="succeeded", snapshot_id=snapshot_id, snapshot_path=str(cluster.tmp / "snap"),
            config_path="training/configs/tiny-llama.yaml", config_text="", overrides=[], num_gpus=1,
            run_dir=str(run_dir), eval_datasets=["gsm8k"], step=120, total_steps=120,
            last_loss=lines[-1]["loss"], tokens_per_s_per_gpu=4321.0, metrics={},
        )  # fmt: skip
        session.add(run)
        session.flush()
        results = {"datasets": {"gsm8k": {"accuracy": 0.25}, "svamp": {"accuracy": 0.375}}}
        session.add(
            Evaluation(
                run_id=run.id,
                state="succeeded",
                model_dir=str(run_dir / "final"),
                datasets=["gsm8k", "svamp"],
                results=results,
                accuracy=0.3,
                out_dir=str(run_dir / "eval"),
            )
        )
    engine.dispose()
    return job, snapshot_id


def test_dashboard_shows_the_database_in_chromium(
    cluster: Cluster, serve: Callable[..., Api], datasets_dir: Path
) -> None:
    from playwright.sync_api import sync_playwright

    job, snapshot_id = _data(cluster, datasets_dir)
    api = serve(KPDD_API_TOKEN=TOKEN)
    engine = create_engine(cluster.db_url)
    with Session(engine) as session:
        generated = {
            (p, m, mo): n
            for p, m, mo, n in session.execute(
                select(Rationale.provider, Rationale.model, Rationale.mode, func.count()).group_by(
                    Rationale.provider, Rationale.model, Rationale.mode
                )
            )
        }
        valid = session.scalar(select(func.count()).where(Rationale.verdict == "valid"))
        spent = session.scalar(select(func.sum(Rationale.cost_usd)))
        calls = session.scalar(select(func.count()).select_from(TeacherCall))
    engine.dispose()
    assert calls and valid and spent

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(api.base + "/")
        page.wait_for_selector("#login:not([hidden])")  # reads are closed: the page asks for the token
        page.fill("#token", TOKEN)
        page.click("#login button")
        page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
        page.wait_for_selector(".loss-chart canvas", timeout=30_000)

        assert page.text_content("#jobs-total") == "100,001"
        rows = page.query_selector_all("#jobs-table tbody tr")
        assert len(rows) == 20  # paged: never 100,001 rows in the page
        assert page.text_content("#rationales-total") == f"{sum(generated.values()):,}"
        assert page.text_content("#rationales-valid").startswith(f"{valid:,} valid")
        for (provider, model, mode), n in generated.items():
            row = page.query_selector(
                f'#teachers-table tr[data-teacher="{provider}:{model}"][data-mode="{mode}"]'
            )
            assert row is not None and f"{n:,}" in row.inner_text()
        assert page.text_content("#snapshots-total") == "1"
        assert page.query_selector(f'#snapshots-table tr[data-snapshot="{snapshot_id}"]') is not None
        assert "120 / 120" in page.inner_text("#runs-table")
        assert page.inner_text("#runs-table .accuracy") == "gsm8k 25.0%, svamp 37.5%"
        assert page.is_hidden("#login")
        assert page.query_selector("#throughput-chart canvas") is not None
        failures = page.inner_text("#failures-table")
        assert "rationale unparsed" in failures or "rationale failed" in failures

        page.click("#jobs-next")
        page.wait_for_function("document.querySelector('#jobs-page').textContent.startsWith('21-40')")
        ARTIFACTS.mkdir(exist_ok=True)
        page.click("#jobs-prev")
        page.wait_for_function("document.querySelector('#jobs-page').textContent.startsWith('1-20')")
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        browser.close()
    assert job > 0
