"""A batch poller that dies between writing its batch row and recording the provider's answer:
the next cycle (any worker's) finds the batch at the provider by its tag and adopts it, or sends
it when the provider never got it; either way each request is sent once. The death is injected
by a poller subclass raising where a killed process would stop; the SDK and the simulator are
real."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.engine import get_engine
from db.models import BatchRequest, GenerationJob, ProviderBatch, Rationale
from services.config import get_settings
from services.generation.batches import BatchPoller, CycleReport, PollerSettings
from services.generation.execute import Generator
from services.generation.failures import run_chunk
from services.generation.jobs import create_job
from services.generation.params import GenerateParams
from services.teachers.registry import build_client
from tests.conftest import CliResult


class _Died(BaseException):
    """What a killed process leaves behind: nothing after this point runs."""


class _DiesAfterSending(BatchPoller):
    def _record_sent(self, batch_id: int, provider_id: str) -> None:
        raise _Died


class _DiesBeforeSending(BatchPoller):
    def _send(self, batch_id: int, teacher: str, tag: str, report: CycleReport) -> None:
        raise _Died


@pytest.fixture
def batch_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    table = {"models": {"openai:gold": {"input": 2.0, "output": 8.0}}}
    prices.write_text(json.dumps(table), encoding="utf-8")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-recovery")
    monkeypatch.setenv("KPDD_PRICES_FILE", str(prices))
    get_settings.cache_clear()


@pytest.mark.parametrize("dying", [_DiesAfterSending, _DiesBeforeSending])
def test_a_poller_that_died_mid_submit_is_recovered_without_sending_twice(
    kpdd: Callable[..., CliResult],
    db_url: str,
    small_corpus: Callable[..., str],
    simulator: Callable[..., str],
    batch_env: None,
    dying: type[BatchPoller],
) -> None:
    small_corpus(4)
    url = simulator(batch_delay_s=0.2)
    engine = get_engine(db_url)
    params = GenerateParams(
        corpus="g", teachers=[f"openai:gold@{url}/v1"], modes=["cot"], transport="batch", chunk_size=2
    )
    created = create_job(engine, params, queued=False)
    generator = Generator(engine, build_client, threads=4)
    settings = PollerSettings(poll_interval_s=0.0, settle_s=0.0, recover_after_s=0.0)
    try:
        for chunk in created.chunks:
            assert run_chunk(generator, created.job_id, chunk).waiting == 2
        with pytest.raises(_Died):
            dying(engine, generator.client_factory, settings).cycle()
        with Session(engine) as session:
            assert session.scalar(select(ProviderBatch.state)) == "submitting"
        poller = BatchPoller(engine, generator.client_factory, settings)
        for _ in range(300):
            report = poller.cycle()
            for job, chunks in report.requeue.items():
                for chunk in chunks:
                    run_chunk(generator, job, chunk)
            with Session(engine) as session:
                status = session.scalar(select(GenerationJob.status))
            if status == "completed":
                break
            time.sleep(0.1)  # while the batch runs at the simulator
        poller.close()
    finally:
        generator.close()
    assert status == "completed"
    stats = httpx.get(f"{url}/_sim/batch-stats", timeout=5).json()
    assert stats["batches"] == 1 and stats["lines"] == stats["distinct_custom_ids"] == 4
    db = create_engine(db_url)
    with Session(db) as session:
        assert session.scalar(select(func.count()).select_from(Rationale)) == 4
        assert session.scalar(select(func.count()).select_from(ProviderBatch)) == 1
        assert {s for s in session.scalars(select(BatchRequest.state))} == {"done"}
    db.dispose()
