"""Executing one chunk of a generation job: teachers asked, answers judged, rows written.

`Generator.process_chunk(job_id, chunk)` is the one service call behind the Celery task (and the
in-process path of the embedded default). It is safe to run twice for the same chunk, at the
same time or after a crash:

- only the chunk's `pending` problems are worked on, and a problem's state only ever moves from
  `pending` to a terminal state;
- rationales are upserted on their identity (problem, provider, model, mode, prompt version,
  sample index), and sample indices that already have a usable rationale are not asked again;
- teacher calls go through the response cache, so work lost with a crashed worker is replayed
  from the database at no cost when the chunk is delivered again;
- a worker holds the chunk's lease while it runs (`services.generation.chunks`): a second
  delivery while the lease is live is skipped, not worked alongside.

The rationales a chunk produces or reuses are recorded as the job's (`job_rationales`,
`services.generation.figures`) as it goes, so the job's figures stay fixed once it ends.

For each (problem, teacher, mode) the sample indices `0..samples-1` are asked first. With
`until_valid` V, new indices are then asked, round after round, until V valid rationales exist
(counting ones stored by earlier runs) or `max_attempts` indices have been tried.

Judging: CoT answers by answer matching against the gold; PoT programs run in the sandbox (the
only place they run) and their answers go through the same matching. A problem without a gold is
judged against the consensus of all its rationales (every teacher, mode and sample).

Batch teachers (`batch=true`, `--transport batch`): a request the cache cannot answer is queued
for a provider batch (`services.teachers.batching`) instead of being sent; its problem stays
pending, the chunk is marked waiting (`job_chunks.batch_wait`), and the batch poller
(`services.generation.batches`) queues the chunk again once the answers are in the ledger. A
sample index waiting for its batch counts towards `until_valid` until its answer is judged.

Budget (`services.generation.budget`): before a rationale's calls are made, their expected cost
is held on the job (a `budget_holds` row with a lease); after them the hold is settled with the
cost the providers reported. A hold that does not fit waits while other holds are live, and
stops the job (`budget_exhausted`) when none is left to settle.

A call that fails after its retries gives a rationale with verdict `failed` and fails its problem
(`failed`, with the error kind); a later `kpdd generate` or redelivery asks that index again.
Any other error propagates to `services.generation.failures.run_chunk`, which classifies and
records it. Once the job has ended no call is made (checked before each one), and once it is
cancelled no rationale is written; a problem started more than `KPDD_CHUNK_MAX_DELIVERIES` times
fails (`attempt_cap`).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, bindparam, select, update
from sqlalchemy.orm import Session

from db.models import JOB_TERMINAL_STATUSES, GenerationJob, Problem, Rationale
from db.nul import escape_nul_json
from db.queries.batches import mark_chunk_waiting, set_chunks_waiting
from db.queries.generation import (
    JOBS_TABLE,
    chunk_problems,
    count_attempt,
    existing_rationales,
    finish_if_done,
    upsert_rationales,
)
from db.queries.teachers import StoredCall
from services.generation.budget import BudgetPolicy, ask_within_budget
from services.generation.chunks import hold_chunk
from services.generation.failures import cap_attempts, close_problems, guarded, may_write, was_stopped
from services.generation.figures import record_produced, record_reused_rationales
from services.generation.params import teacher_options_key
from services.generation.work import (
    ChunkReport,
    ItemResult,
    JobView,
    ProblemRow,
    Slot,
    WorkItem,
    batch_budget_spent,
    key_points_of,
    waits_for_batch,
)
from services.kpdd.prompts import prompt_set_version
from services.kpdd.records import KeyPoints, ParseFailure
from services.teachers.base import TeacherClient
from services.teachers.batching import BATCH_SCOPE, BatchScope
from services.teachers.calls import PREFETCHED
from services.teachers.rationale import (
    CallFailure,
    RationaleOutcome,
    RationaleWork,
    prefetch_first_calls,
    produce_rationale,
)
from services.teachers.spec import TeacherSpec, parse_spec
from services.validation.consensus import (
    Consensus,
    form_consensus,
    vote_key_for_answer,
    vote_key_for_span,
)
from services.validation.matching import judge_answer_text, judge_execution
from services.validation.sandbox import ExecutionKind, ExecutionResult, Sandbox

log = logging.getLogger(__name__)

ClientFactory = Callable[[TeacherSpec], TeacherClient]
Prefetched = Mapping[str, StoredCall | None] | None  # services.teachers.calls.PREFETCHED


_JOB_VIEW_COLUMNS = "id status teachers modes stage_mode samples until_valid max_attempts budget_usd params"
_JOB_VIEW = select(*(getattr(GenerationJob, name) for name in _JOB_VIEW_COLUMNS.split())).where(
    GenerationJob.id == bindparam("job_id")
)
_START_JOB = (
    update(JOBS_TABLE)
    .where(JOBS_TABLE.c.id == bindparam("job_id"), JOBS_TABLE.c.status == "queued")
    .values(status="running", started_at=bindparam("started_at"))
)


class Generator:
    """Per-process machinery for running chunks: database engine, teacher clients (one per
    spec, shared by threads), a thread pool for concurrent teacher calls, and the sandbox
    (started on the first program)."""

    def __init__(
        self,
        engine: Engine,
        client_factory: ClientFactory,
        *,
        threads: int = 16,
        sandbox_parallelism: int = 4,
        sandbox_strict: bool | None = None,
        consensus_min_agreement: float = 0.6,
        consensus_min_votes: int = 2,
        budget_policy: BudgetPolicy | None = None,
    ) -> None:
        self.engine = engine
        self.budget_policy = budget_policy or BudgetPolicy()
        self.client_factory = client_factory
        self.threads = threads
        self.sandbox_parallelism = sandbox_parallelism
        self.sandbox_strict = sandbox_strict  # None: as KPDD_SANDBOX_MODE says outside a worker
        self.consensus_min_agreement = consensus_min_agreement
        self.consensus_min_votes = consensus_min_votes
        self._clients: dict[str, TeacherClient] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kpdd-teacher")
        self._sandbox: Sandbox | None = None

    # --- resources ---------------------------------------------------------------------------

    def client(self, spec: TeacherSpec) -> TeacherClient:
        key = spec.to_text()
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = self.client_factory(spec)
            return client

    def sandbox(self) -> Sandbox:
        with self._lock:
            if self._sandbox is None:
                sandbox = Sandbox(parallelism=self.sandbox_parallelism, strict=self.sandbox_strict)
                self._sandbox = sandbox.start()
            return self._sandbox

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    # --- the chunk ---------------------------------------------------------------------------

    def process_chunk(self, job_id: int, chunk: int, problem_ids: Sequence[int] | None = None) -> ChunkReport:
        # Chunk lease (services.generation.chunks): held, and renewed by a heartbeat, while the
        # chunk runs; a delivery of a chunk another worker holds is skipped.
        with hold_chunk(self.engine, job_id, chunk) as lease:
            if not lease.taken:
                return ChunkReport(job_id, chunk, skipped=lease.skip_reason())
            return self._process_chunk(job_id, chunk, problem_ids)

    def _process_chunk(self, job_id: int, chunk: int, problem_ids: Sequence[int] | None) -> ChunkReport:
        """The chunk's pending problems (those of `problem_ids` only, when given)."""
        report = ChunkReport(job_id, chunk)
        job = self._start(job_id)
        if job is None:
            report.skipped = "the job is finished, cancelled or gone"
            return report
        with Session(self.engine) as session, session.begin():
            pending = [p for p, state in chunk_problems(session, job_id, chunk) if state == "pending"]
            pending = [p for p in pending if problem_ids is None or p in problem_ids]
            set_chunks_waiting(session, [(job_id, chunk)], False)  # set again if it still waits
            if pending:
                count_attempt(session, job_id, pending)
                pending = cap_attempts(session, job_id, chunk, pending)
                problems = [
                    ProblemRow(p.id, p.question, p.gold_answer, p.gold_kind)
                    for p in session.scalars(
                        select(Problem).where(Problem.id.in_(pending)).order_by(Problem.id)
                    )
                ]
        if not pending:
            report.skipped = "no pending problem in this chunk"
            self._finish(job_id)
            return report
        report.problems = len(problems)
        slots = self._known_slots(job, problems)
        record_reused_rationales(self.engine, job, [p.id for p in problems])  # job figures
        failures: dict[int, tuple[str, str]] = {}
        budget_hit: set[int] = set()
        waiting: set[int] = set()  # problems with a request in a provider batch
        round_no = 0
        scope = BatchScope(job_id, chunk)
        # No call once the job has ended (`guarded`).
        ask = guarded(self.engine, job_id, lambda asked: self._ask(job, asked[0], asked[1], scope))
        while True:
            items = [
                WorkItem(problem, teacher, mode, index)
                for problem in problems
                if problem.id not in budget_hit
                for teacher in job.teachers
                for mode in job.modes
                for index in slots[(problem.id, teacher.label, mode)].next_indices(job)
            ]
            if not items or self._stopped(job_id):
                break
            round_no += 1
            # The cache's answers for the whole round in one query, handed to the pool threads.
            prefetched = None if job.refresh else self._prefetch(job, items)
            results = list(self._pool.map(ask, [(item, prefetched) for item in items]))
            self._judge(results, problems)
            rows = []
            for result in results:
                item = result.item
                if result.outcome is None:
                    budget_hit.add(item.problem.id)
                    report.budget_stopped = True
                    continue
                if was_stopped(result.outcome):  # the job ended before the call: nothing to record
                    continue
                slot = slots[(item.problem.id, item.teacher.label, item.mode)]
                if waits_for_batch(result.outcome):  # queued for a batch: no rationale yet
                    waiting.add(item.problem.id)
                    slot.asked.add(item.sample_index)
                    slot.waiting.add(item.sample_index)
                    continue
                if batch_budget_spent(result.outcome):  # its batch did not fit the budget
                    budget_hit.add(item.problem.id)
                    report.budget_stopped = True
                    continue
                rows.append(self._row(job_id, result))
                verdict = rows[-1]["verdict"]
                slot.verdicts[item.sample_index] = verdict
                slot.asked.add(item.sample_index)
                report.rationales += 1
                report.valid += verdict == "valid"
                report.paid_calls += result.outcome.paid_calls
                report.cached_calls += result.outcome.cached_calls
                if isinstance(result.outcome.result, CallFailure):
                    failures[item.problem.id] = (result.outcome.result.kind, result.outcome.result.message)
            with self.engine.begin() as conn:  # one statement per kind of write, whatever the rows
                if not may_write(conn, job_id):  # cancelled: calls in flight are in the ledger only
                    break
                ids = upsert_rationales(conn, [escape_nul_json(row) for row in rows])
                record_produced(conn, job_id, ids, [row["verdict"] for row in rows])  # job figures
            log.debug("job %s chunk %s round %s: %d rationales", job_id, chunk, round_no, len(rows))
        if waiting - budget_hit:
            with Session(self.engine) as session, session.begin():
                mark_chunk_waiting(session, job_id, chunk, sorted(waiting - budget_hit))
            report.waiting = len(waiting - budget_hit)
        closing = [p.id for p in problems if p.id not in waiting or p.id in budget_hit]
        close_problems(self.engine, job_id, closing, failures, budget_hit)
        return report

    # --- steps -------------------------------------------------------------------------------

    def _start(self, job_id: int) -> JobView | None:
        with self.engine.begin() as conn:  # Core: the columns the chunk needs, no ORM object
            row = conn.execute(_JOB_VIEW, {"job_id": job_id}).first()
            if row is None or row.status in JOB_TERMINAL_STATUSES:
                return None
            if row.status == "queued":
                conn.execute(_START_JOB, {"job_id": job_id, "started_at": datetime.now(UTC)})
            return JobView(
                id=row.id,
                teachers=[parse_spec(t["spec"]) for t in row.teachers],
                modes=list(row.modes),
                stage_mode=row.stage_mode,
                samples=row.samples,
                until_valid=row.until_valid,
                attempts_cap=row.max_attempts if row.max_attempts is not None else row.samples,
                budgeted=row.budget_usd is not None,
                refresh=bool(row.params.get("refresh")),
                reuse_any_options=bool(row.params.get("reuse_any_options")),
            )

    def _stopped(self, job_id: int) -> bool:
        with Session(self.engine) as session:
            status = session.scalar(select(GenerationJob.status).where(GenerationJob.id == job_id))
        return status is None or status in JOB_TERMINAL_STATUSES

    def _known_slots(self, job: JobView, problems: list[ProblemRow]) -> dict[tuple[int, str, str], Slot]:
        """The stored rationales each (problem, teacher, mode) may reuse: those made with the
        teacher's generation options (`options_key`), or any with `--reuse-any-options`; with
        `--refresh`, only the ones this job made itself (a redelivered chunk)."""
        slots: dict[tuple[int, str, str], Slot] = defaultdict(Slot)
        ids = [p.id for p in problems]
        with Session(self.engine) as session:
            for teacher in job.teachers:
                key = teacher_options_key(teacher)
                for mode in job.modes:
                    version = prompt_set_version(mode, job.stage_mode)  # type: ignore[arg-type]
                    stored = existing_rationales(
                        session,
                        ids,
                        teacher.provider,
                        teacher.model,
                        mode,
                        version,
                        options_key=key,
                        reuse_any_options=job.reuse_any_options,
                        produced_by_job=job.id if job.refresh else None,
                    )
                    for problem_id, verdicts in stored.items():
                        slots[(problem_id, teacher.label, mode)].verdicts.update(verdicts)
        return slots

    def _ask(self, job: JobView, item: WorkItem, prefetched: Prefetched, scope: BatchScope) -> ItemResult:
        client = self.client(item.teacher)
        token = BATCH_SCOPE.set(scope)  # in this pool thread: batch teachers queue their requests
        known = PREFETCHED.set(prefetched)
        try:
            return self._ask_in_scope(job, item, client)
        finally:
            PREFETCHED.reset(known)
            BATCH_SCOPE.reset(token)

    def _prefetch(self, job: JobView, items: list[WorkItem]) -> Prefetched:
        asks = [(self.client(item.teacher), self._work(job, item)) for item in items]
        return prefetch_first_calls(self.engine, asks)

    @staticmethod
    def _work(job: JobView, item: WorkItem) -> RationaleWork:
        return RationaleWork(
            question=item.problem.question,
            mode=item.mode,  # type: ignore[arg-type]
            stage_mode=job.stage_mode,  # type: ignore[arg-type]
            sample_index=item.sample_index,
            problem_id=item.problem.id,
            refresh=job.refresh,
        )

    def _ask_in_scope(self, job: JobView, item: WorkItem, client: TeacherClient) -> ItemResult:
        work = self._work(job, item)
        if not job.budgeted or item.teacher.options.batch:  # a batch is held in full when sent
            return ItemResult(item, produce_rationale(self.engine, client, work))
        return ItemResult(item, ask_within_budget(self.engine, job.id, client, work, self.budget_policy))

    def _judge(self, results: list[ItemResult], problems: list[ProblemRow]) -> None:
        """Fill in each result's verdict: programs run in the sandbox, then matching."""
        judged = [(r, kp) for r in results if (kp := key_points_of(r)) is not None]
        programs = [(r, kp.program) for r, kp in judged if kp.program is not None]
        executions: dict[int, ExecutionResult] = {}
        if programs:
            ran = self.sandbox().run_many([program for _, program in programs])
            executions = {id(r): e for (r, _), e in zip(programs, ran, strict=True)}
        for result, key_points in judged:
            if key_points.program is not None:
                execution = executions[id(result)]
                if execution.kind == ExecutionKind.OK and execution.answer is not None:
                    result.vote = vote_key_for_answer(execution.answer)
                    result.answer = execution.answer.value
            else:
                result.answer = key_points.final_answer_text
                result.vote = vote_key_for_span(key_points.final_answer_text or "")
        golds: dict[int, str | Consensus | None] = {p.id: p.gold_answer for p in problems}
        unlabelled = [p for p in problems if p.gold_kind == "none"]
        if unlabelled:
            golds.update(self._consensus(results, unlabelled))
        for result, key_points in judged:
            gold = golds[result.item.problem.id]
            if key_points.program is not None:
                result.verdict = judge_execution(executions[id(result)], gold)
            else:
                result.verdict = judge_answer_text(key_points.final_answer_text or "", gold, marker="answer")
            result.judged_by = "consensus" if isinstance(gold, Consensus) else "gold"

    def _consensus(self, results: list[ItemResult], problems: list[ProblemRow]) -> dict[int, Consensus]:
        """The pseudo-gold of each unlabelled problem: a vote over its rationales of this round
        and the answers stored by earlier rounds and runs."""
        votes: dict[int, list[str | None]] = defaultdict(list)
        fresh = {(r.item.problem.id, r.item.teacher.label, r.item.mode, r.item.sample_index) for r in results}
        for result in results:
            if result.outcome is not None and not isinstance(result.outcome.result, CallFailure):
                votes[result.item.problem.id].append(result.vote)
        for problem_id, answer in self._stored_answers([p.id for p in problems], fresh):
            votes[problem_id].append(vote_key_for_span(answer) if answer is not None else None)
        return {
            p.id: form_consensus(
                votes[p.id], min_agreement=self.consensus_min_agreement, min_votes=self.consensus_min_votes
            )
            for p in problems
        }

    def _stored_answers(
        self, problem_ids: list[int], fresh: set[tuple[int, str, str, int]]
    ) -> Iterable[tuple[int, str | None]]:
        with Session(self.engine) as session:
            rows = session.execute(
                select(
                    Rationale.problem_id,
                    Rationale.provider,
                    Rationale.model,
                    Rationale.mode,
                    Rationale.sample_index,
                    Rationale.answer,
                ).where(Rationale.problem_id.in_(problem_ids), Rationale.verdict != "failed")
            ).all()
        for problem_id, provider, model, mode, index, answer in rows:
            if (problem_id, f"{provider}:{model}", mode, index) not in fresh:
                yield problem_id, answer

    def _row(self, job_id: int, result: ItemResult) -> dict[str, Any]:
        outcome = result.outcome
        assert outcome is not None
        item = result.item
        row: dict[str, Any] = {
            "problem_id": item.problem.id,
            "job_id": job_id,
            "provider": item.teacher.provider,
            "model": item.teacher.model,
            "mode": item.mode,
            "stage_mode": self._stage_mode_of(outcome),
            "prompt_version": outcome.prompt_version,
            "sample_index": item.sample_index,
            "options_key": teacher_options_key(item.teacher),
            "core_question": None,
            "solving_info": None,
            "solution_text": None,
            "final_answer_text": None,
            "program": None,
            "answer": result.answer,
            "verdict_details": None,
            "judged_by": None,
            "call_ids": [c.call_id for c in outcome.calls],
            "cost_usd": outcome.cost_usd,
            "tokens_in": outcome.tokens_in,
            "tokens_out": outcome.tokens_out,
        }
        got = outcome.result
        if isinstance(got, KeyPoints):
            verdict = result.verdict
            assert verdict is not None
            row.update(
                core_question=got.core_question,
                solving_info=got.solving_info,
                solution_text=got.solution_text,
                final_answer_text=got.final_answer_text,
                program=got.program,
                verdict="valid" if verdict.match else "invalid",
                verdict_kind=verdict.kind,
                verdict_details=verdict.to_json(),
                judged_by=result.judged_by,
            )
        elif isinstance(got, ParseFailure):
            row.update(verdict="unparsed", verdict_kind=got.kind, verdict_details={"message": got.message})
        else:
            row.update(
                verdict="failed",
                verdict_kind=got.kind,
                verdict_details={"message": got.message, "stage": got.stage, "retryable": got.retryable},
            )
        return row

    @staticmethod
    def _stage_mode_of(outcome: RationaleOutcome) -> str:
        return "staged" if "-staged-" in outcome.prompt_version else "single"

    def _finish(self, job_id: int) -> None:
        with Session(self.engine) as session, session.begin():
            finish_if_done(session, job_id)


__all__ = ["ChunkReport", "ClientFactory", "Generator"]
