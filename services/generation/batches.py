"""The batch poller: provider batches sent, polled, ingested, cancelled; waiting chunks queued.

Requests of batch teachers are queued by the chunks that meet them (`services.teachers.batching`).
`BatchPoller.cycle()` then does, in order, everything that moves them on; it runs periodically in
every `kpdd worker` (`workers.batch_poller`, one cycle at a time across the deployment by a
Postgres advisory lock held for the cycle) and in the loop of the embedded default
(`kpdd generate` without a broker). Every step is written to Postgres before and after the
provider is asked, so a worker, or the whole stack, may die at any point:

1. **Ended jobs.** Queued requests of a job that ended fail (`stopped`); a provider batch still
   running for one is cancelled at the provider (`kpdd cancel` therefore cancels its batches
   within one cycle). What a cancelled batch had already answered is ingested (it was paid).
2. **Recovery.** A batch row still `submitting` after `RECOVER_AFTER_S` (5 min) belongs to a cycle that
   died between the provider's answer and our write: it is looked up at the provider by its tag
   (`BatchAPI.find`), adopted when found, sent again when not (the provider never got it).
3. **Submit.** A job's queued requests of one teacher are sent once none was added for
   `KPDD_BATCH_SETTLE_S`, or as soon as a full batch is there, split to the provider's limits on
   requests and bytes. Before a batch is sent its whole expected cost (batch prices) is held on
   a budgeted job; what does not fit waits for other batches to settle, and when none is in
   flight the job ends `budget_exhausted`. The batch row and its requests are written
   (`submitting`) before the provider is asked, and `in_progress` with the provider's id after.
4. **Poll and ingest.** Batches in progress are polled every `KPDD_BATCH_POLL_INTERVAL_S`; an
   ended, expired or cancelled one has its results read. Each answer becomes a ledger row, as
   an online call's would (`calls.answered`: batch prices, `batch_id`), and its request `done`,
   in one transaction with the batch's figures and its budget hold settled. A request that
   errored retryably, expired or was cancelled by the provider is queued again (only what is
   missing is sent again), at most `KPDD_BATCH_MAX_SUBMISSIONS` times; a permanent error fails
   it. A result ingested once is never ingested again (its request is no longer `submitted`).
5. **Requeue.** Chunks waiting for a batch (`job_chunks.batch_wait`) whose requests are all
   answered are handed back (`CycleReport.requeue`) for the caller to queue: their next run
   replays the answers from the cache, writes rationales and queues the next round's requests.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from db.models import BatchRequest, GenerationJob, ProviderBatch
from db.queries.batches import (
    BATCH_LOCK_KEY,
    batches_in,
    chunks_to_requeue,
    close_requests_of_ended_jobs,
    job_status_of,
    open_requests,
    queued_groups,
    requests_of,
    set_chunks_waiting,
    take_queued,
    waiting_chunks,
)
from db.queries.budget import settle_hold, take_hold
from db.queries.operations import db_now
from services.generation.batch_ingest import ingest_results, requeue_or_fail
from services.generation.failures import safe_message
from services.teachers.base import TeacherClient
from services.teachers.batches import BatchAPI, BatchLine, batch_api
from services.teachers.batching import BATCH_BUDGET
from services.teachers.errors import TeacherCallError
from services.teachers.spec import TeacherSpec, parse_spec

log = logging.getLogger(__name__)

RECOVER_AFTER_S = 300.0  # a `submitting` batch older than this lost its cycle
HOLD_TTL_S = 26 * 3600.0  # a batch's budget hold outlives the providers' 24 h window
PROVIDER_CANCELLING = ("cancelling", "canceling", "cancelled", "canceled")

ClientFactory = Callable[[TeacherSpec], TeacherClient]


@dataclass(slots=True)
class CycleReport:
    submitted: int = 0  # batches sent
    sent_requests: int = 0
    ingested: int = 0  # answers written
    requeued_requests: int = 0  # sent again (expired, cancelled, retryable errors)
    failed_requests: int = 0
    cancelled: int = 0  # provider batches cancelled for ended jobs
    requeue: dict[int, list[int]] = field(default_factory=dict)  # job -> chunks to queue again
    skipped: bool = False  # another cycle holds the lock

    def busy(self) -> bool:
        return bool(self.submitted or self.ingested or self.requeue or self.requeued_requests)


@dataclass(slots=True, frozen=True)
class PollerSettings:
    poll_interval_s: float = 60.0
    settle_s: float = 30.0
    max_requests: int = 50_000
    max_submissions: int = 3
    recover_after_s: float = RECOVER_AFTER_S

    @classmethod
    def from_settings(cls) -> PollerSettings:
        from services.config import get_settings

        s = get_settings()
        return cls(s.batch_poll_interval_s, s.batch_settle_s, s.batch_max_requests, s.batch_max_submissions)


class BatchPoller:
    """One deployment's batch cycle (module doc). Clients are built per teacher spec, once."""

    def __init__(
        self, engine: Engine, client_factory: ClientFactory, settings: PollerSettings | None = None
    ) -> None:
        self.engine = engine
        self.client_factory = client_factory
        self.settings = settings or PollerSettings.from_settings()
        self._clients: dict[str, TeacherClient] = {}

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def api(self, teacher: str) -> tuple[TeacherClient, BatchAPI]:
        client = self._clients.get(teacher)
        if client is None:
            client = self._clients[teacher] = self.client_factory(parse_spec(teacher))
        return client, batch_api(client)

    # --- the cycle -----------------------------------------------------------------------------

    def cycle(self) -> CycleReport:
        report = CycleReport()
        with self._lock() as taken:
            if not taken:
                report.skipped = True
                return report
            self._ended_jobs(report)
            self._recover(report)
            self._submit(report)
            self._poll(report)
            self._requeue(report)
        return report

    @contextmanager
    def _lock(self) -> Iterator[bool]:
        """A session-level advisory lock on Postgres, held by one connection for the cycle (a
        dead worker's connection closes and frees it); nothing elsewhere (one host)."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        with self.engine.connect() as conn:
            taken = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": BATCH_LOCK_KEY}))
            conn.commit()
            try:
                yield taken
            finally:
                if taken:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": BATCH_LOCK_KEY})
                    conn.commit()

    def _ended_jobs(self, report: CycleReport) -> None:
        with Session(self.engine) as session, session.begin():
            report.failed_requests += close_requests_of_ended_jobs(session)
            live = batches_in(session, ["in_progress"])
            todo = [
                (b.id, b.teacher, b.provider_batch_id)
                for b in live
                if b.provider_batch_id
                and (b.provider_status or "") not in PROVIDER_CANCELLING
                and job_status_of(session, b.job_id) not in (None, "queued", "running")
            ]
        for batch_id, teacher, provider_id in todo:
            assert provider_id is not None
            try:
                _client, api = self.api(teacher)
                remote = api.cancel(provider_id)
            except (TeacherCallError, ValueError) as exc:
                log.warning(
                    "batch %s: cancelling %s failed, trying again next cycle: %s", batch_id, provider_id, exc
                )
                continue
            report.cancelled += 1
            with Session(self.engine) as session, session.begin():
                row = session.get(ProviderBatch, batch_id)
                if row is not None:
                    row.provider_status = remote.raw_status
            log.info("batch %s (%s): cancelled at the provider: its job ended", batch_id, provider_id)

    def _recover(self, report: CycleReport) -> None:
        with Session(self.engine) as session, session.begin():
            cutoff = db_now(session) - timedelta(seconds=self.settings.recover_after_s)
            stale = [
                (b.id, b.teacher, b.tag, b.submitting_at, b.requests)
                for b in batches_in(session, ["submitting"])
                if b.submitting_at is not None and aware(b.submitting_at) < cutoff
            ]
        for batch_id, teacher, tag, since, count in stale:
            assert since is not None
            _client, api = self.api(teacher)
            try:
                found = api.find(tag, since.timestamp() - 120, count)
            except TeacherCallError as exc:
                log.warning("batch %s: looking it up failed, trying again next cycle: %s", batch_id, exc)
                continue
            if found is not None:
                log.warning(
                    "batch %s: found at the provider as %s after a lost write; adopted", batch_id, found
                )
                self._record_sent(batch_id, found)
            else:
                log.warning("batch %s: the provider never got it; sending it again", batch_id)
                self._send(batch_id, teacher, tag, report)

    def _submit(self, report: CycleReport) -> None:
        with Session(self.engine) as session:
            groups = queued_groups(session)
            now = db_now(session)
        for group in groups:
            quiet = (now - aware(group.newest)).total_seconds() >= self.settings.settle_s
            if not quiet and group.requests < self.settings.max_requests:
                continue  # chunks are still adding to this job's batch
            while True:
                made = self._make_batch(group.job_id, group.teacher)
                if made is None:
                    break
                self._send(made[0], group.teacher, made[1], report)

    def _make_batch(self, job_id: int, teacher: str) -> tuple[int, str] | None:
        """Write one batch of the group's queued requests (`submitting`), its budget held; None
        when nothing is left to send (or nothing fits the budget yet)."""
        client, api = self.api(teacher)
        limit = min(self.settings.max_requests, api.limits.max_requests)
        with Session(self.engine) as session, session.begin():
            requests = take_queued(session, job_id, teacher, limit)
            chosen: list[BatchRequest] = []
            size = 0
            for request in requests:
                line = api.line_bytes(BatchLine(request.fingerprint, request.body))
                if chosen and size + line > api.limits.max_bytes:
                    break
                chosen.append(request)
                size += line
            if not chosen:
                return None
            job = session.get(GenerationJob, job_id)
            assert job is not None
            hold_id, reserved = None, None
            if job.budget_usd is not None:
                chosen, hold_id, reserved = self._hold(session, job, chosen)
                if not chosen:
                    return None
            tag = uuid.uuid4().hex
            batch = ProviderBatch(
                job_id=job_id,
                teacher=teacher,
                provider=client.provider,
                model=client.spec.model,
                tag=tag,
                state="submitting",
                requests=len(chosen),
                hold_id=hold_id,
                reserved_usd=reserved,
                submitting_at=db_now(session),
            )
            session.add(batch)
            session.flush()
            for request in chosen:
                request.state = "submitting"
                request.batch_id = batch.id
                request.submissions += 1
            return batch.id, tag

    def _hold(
        self, session: Session, job: GenerationJob, chosen: list[BatchRequest]
    ) -> tuple[list[BatchRequest], int | None, Decimal | None]:
        """Hold the batch's whole expected cost: as many requests as fit (module doc, step 3)."""
        room = Decimal(job.budget_usd or 0) - Decimal(job.spent_usd) - Decimal(job.reserved_usd)
        fitting: list[BatchRequest] = []
        total = Decimal(0)
        for request in chosen:
            estimate = Decimal(request.estimate_usd or 0)
            if total + estimate > room:
                break
            fitting.append(request)
            total += estimate
        if not fitting:
            if not _live_holds(session, job.id):  # nothing in flight can settle and make room
                for request in chosen:
                    request.state = "failed"
                    request.error_kind = BATCH_BUDGET
                    request.error_message = f"the job's budget of ${job.budget_usd} cannot hold its batch"
                # Their chunks run again: answered requests give rationales, these stop the job
                # `budget_exhausted` (services.generation.execute) as an online budget miss does.
                log.info("job %s: no batch fits what is left of its budget: budget spent", job.id)
            return [], None, None
        attempt = take_hold(session, job.id, total, f"batch:{job.id}", HOLD_TTL_S)
        if attempt.hold_id is None:
            return [], None, None
        return fitting, attempt.hold_id, total

    def _send(self, batch_id: int, teacher: str, tag: str, report: CycleReport) -> None:
        _client, api = self.api(teacher)
        with Session(self.engine) as session:
            lines = [
                BatchLine(r.fingerprint, r.body)
                for r in requests_of(session, batch_id)
                if r.state == "submitting"
            ]
        try:
            provider_id = api.submit(lines, tag)
        except TeacherCallError as exc:
            if exc.retryable:  # stays `submitting`: recovery looks it up, then sends it again
                log.warning("batch %s: sending failed, recovery tries again: %s", batch_id, exc)
                return
            self._fail_batch(batch_id, exc, report)
            return
        self._record_sent(batch_id, provider_id)
        report.submitted += 1
        report.sent_requests += len(lines)
        log.info("batch %s: %d requests sent as %s", batch_id, len(lines), provider_id)

    def _record_sent(self, batch_id: int, provider_id: str) -> None:
        with Session(self.engine) as session, session.begin():
            batch = session.get(ProviderBatch, batch_id)
            assert batch is not None
            batch.provider_batch_id = provider_id
            batch.state = "in_progress"
            batch.submitted_at = db_now(session)
            for request in requests_of(session, batch_id):
                if request.state == "submitting":
                    request.state = "submitted"

    def _fail_batch(self, batch_id: int, error: TeacherCallError, report: CycleReport) -> None:
        """A batch the provider refused as a whole: its requests fail with the provider's error."""
        log.error("batch %s: refused by the provider: %s", batch_id, error)
        with Session(self.engine) as session, session.begin():
            batch = session.get(ProviderBatch, batch_id)
            assert batch is not None
            batch.state = "failed"
            batch.error = safe_message(str(error))
            batch.ended_at = db_now(session)
            for request in requests_of(session, batch_id):
                if request.state in ("submitting", "submitted"):
                    request.state = "failed"
                    request.error_kind = error.kind
                    request.error_message = safe_message(str(error))
                    report.failed_requests += 1
            if batch.hold_id is not None:
                settle_hold(session, batch.job_id, batch.hold_id, Decimal(0))
                batch.hold_id = None

    def _poll(self, report: CycleReport) -> None:
        with Session(self.engine) as session:
            now = db_now(session)
            due = [
                (b.id, b.teacher, b.provider_batch_id)
                for b in batches_in(session, ["in_progress"], limit=1000)
                if b.provider_batch_id
                and (
                    b.polled_at is None
                    or (now - aware(b.polled_at)).total_seconds() >= self.settings.poll_interval_s * 0.9
                )
            ]
        for batch_id, teacher, provider_id in due:
            assert provider_id is not None
            client, api = self.api(teacher)
            try:
                remote = api.retrieve(provider_id)
            except TeacherCallError as exc:
                log.warning(
                    "batch %s: polling %s failed, trying again next cycle: %s", batch_id, provider_id, exc
                )
                continue
            with Session(self.engine) as session, session.begin():
                row = session.get(ProviderBatch, batch_id)
                assert row is not None
                row.provider_status = remote.raw_status
                row.polled_at = db_now(session)
                if remote.status == "failed":
                    row.error = safe_message(remote.message or "the provider failed the batch")
            if remote.status == "failed":
                self._provider_failed(batch_id, remote.message or "", report)
                continue
            if not remote.ended:
                continue
            try:
                results = list(api.results(provider_id))
            except TeacherCallError as exc:
                log.warning(
                    "batch %s: reading results of %s failed, trying again: %s", batch_id, provider_id, exc
                )
                continue
            ingest_results(
                self.engine, client, batch_id, remote, results, self.settings.max_submissions, report
            )

    def _provider_failed(self, batch_id: int, message: str, report: CycleReport) -> None:
        """The provider failed the whole batch (e.g. its file did not validate): its requests are
        sent again while they have submissions left."""
        with Session(self.engine) as session, session.begin():
            batch = session.get(ProviderBatch, batch_id)
            assert batch is not None
            batch.state = "failed"
            batch.ended_at = db_now(session)
            for request in requests_of(session, batch_id):
                if request.state == "submitted":
                    error = TeacherCallError("server", f"the provider failed the batch: {message}")
                    if requeue_or_fail(request, error, self.settings.max_submissions, True):
                        report.requeued_requests += 1
                    else:
                        report.failed_requests += 1
            if batch.hold_id is not None:
                settle_hold(session, batch.job_id, batch.hold_id, Decimal(0))
                batch.hold_id = None

    def _requeue(self, report: CycleReport) -> None:
        with Session(self.engine) as session, session.begin():
            chunks = chunks_to_requeue(session, db_now(session))
            set_chunks_waiting(session, chunks, False)
        grouped: dict[int, list[int]] = defaultdict(list)
        for job_id, chunk in chunks:
            grouped[job_id].append(chunk)
        report.requeue = dict(grouped)

    def restore_waiting(self, job_id: int, chunks: list[int]) -> None:
        """The caller could not queue `chunks`: they wait again (the next cycle retries)."""
        with Session(self.engine) as session, session.begin():
            set_chunks_waiting(session, [(job_id, c) for c in chunks], True)


def follow_batches_inline(
    engine: Engine,
    client_factory: ClientFactory,
    job_id: int,
    run_chunk: Callable[[int, int], object],
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """The embedded default's batch loop: after the job's chunks ran once, cycle here (nothing
    to settle: every chunk has queued its requests) and run the chunks whose answers are in,
    until no request of the job is open and no chunk waits."""
    base = PollerSettings.from_settings()
    poller = BatchPoller(engine, client_factory, replace(base, settle_s=0.0))
    try:
        while True:
            with Session(engine) as session:
                status = job_status_of(session, job_id)
                if status not in ("queued", "running"):
                    break
                if not open_requests(session, job_id) and not waiting_chunks(session, job_id):
                    break
            report = poller.cycle()
            for job, chunks in report.requeue.items():
                for chunk in chunks:
                    run_chunk(job, chunk)
            if not report.busy():
                sleep(base.poll_interval_s)
        poller.cycle()  # cancels what an ended job left at the provider, ingests nothing new
    finally:
        poller.close()


def aware(moment: datetime) -> datetime:
    """A stored time as UTC-aware (SQLite gives naive UTC times back)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _live_holds(session: Session, job_id: int) -> bool:
    """Whether the job has live budget holds (batches or online calls in flight: settling them
    may make room)."""
    from db.queries.budget import job_spend

    spend = job_spend(session, job_id)
    return spend is not None and spend.live_holds > 0


__all__ = ["BatchPoller", "CycleReport", "PollerSettings", "follow_batches_inline"]
