"""Executing one chunk of a generation job: teachers asked, answers judged, rows written.

`Generator.process_chunk(job_id, chunk)` is the one service call behind the Celery task (and the
in-process path of the embedded default). It is safe to run twice for the same chunk, at the
same time or after a crash:

- only the chunk's `pending` problems are worked on, and a problem's state only ever moves from
  `pending` to a terminal state;
- rationales are upserted on their identity (problem, provider, model, mode, prompt version,
  sample index), and sample indices that already have a usable rationale are not asked again;
- teacher calls go through the response cache, so work lost with a crashed worker is replayed
  from the database at no cost when the chunk is delivered again.

For each (problem, teacher, mode) the sample indices `0..samples-1` are asked first. With
`until_valid` V, new indices are then asked, round after round, until V valid rationales exist
(counting ones stored by earlier runs) or `max_attempts` indices have been tried.

Judging: CoT answers by answer matching against the gold; PoT programs run in the sandbox (the
only place they run) and their answers go through the same matching. A problem without a gold is
judged against the consensus of all its rationales (every teacher, mode and sample).

Budget: before a rationale's calls are made, an upper bound of their cost (prompt length and
`max_tokens` at the model's price) is reserved on the job row, in Postgres, atomically; after them
the reservation is settled with the cost the provider reported. A reservation that does not fit
stops the job (`budget_exhausted`): no call is issued that could take spending past the budget.
A worker killed between reserving and settling leaves its reservation held, which can only stop a
job early, never let it overspend.

A call that fails after its retries gives a rationale with verdict `failed` and fails its problem
(`failed`, with the error kind); a later `kpdd generate` or redelivery asks that index again.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from db.models import JOB_TERMINAL_STATUSES, GenerationJob, Problem, Rationale
from db.queries.generation import (
    chunk_problems,
    count_attempt,
    existing_rationales,
    finish_if_done,
    reserve_budget,
    set_problem_states,
    settle_budget,
    stop_pending,
    upsert_rationales,
)
from services.kpdd.prompts import prompt_set_version, render_prompt
from services.kpdd.records import KeyPoints, ParseFailure
from services.teachers.base import TeacherClient
from services.teachers.rationale import CallFailure, RationaleOutcome, RationaleWork, produce_rationale
from services.teachers.spec import TeacherSpec, parse_spec
from services.validation.consensus import (
    Consensus,
    form_consensus,
    vote_key_for_answer,
    vote_key_for_span,
)
from services.validation.matching import judge_answer_text, judge_execution
from services.validation.sandbox import ExecutionKind, ExecutionResult, Sandbox
from services.validation.verdict import Verdict

log = logging.getLogger(__name__)

ClientFactory = Callable[[TeacherSpec], TeacherClient]
# Characters per token assumed when bounding a prompt's cost: low on purpose (an upper bound).
_CHARS_PER_TOKEN_BOUND = 2


@dataclass(slots=True, frozen=True)
class ProblemRow:
    id: int
    question: str
    gold_answer: str | None
    gold_kind: str


@dataclass(slots=True, frozen=True)
class WorkItem:
    problem: ProblemRow
    teacher: TeacherSpec
    mode: str
    sample_index: int


@dataclass(slots=True)
class ItemResult:
    item: WorkItem
    outcome: RationaleOutcome | None  # None: not asked, the budget ran out first
    # Filled in by judging:
    verdict: Verdict | None = None
    judged_by: str | None = None  # gold | consensus
    answer: str | None = None
    vote: str | None = None


@dataclass(slots=True)
class ChunkReport:
    job_id: int
    chunk: int
    problems: int = 0
    rationales: int = 0
    valid: int = 0
    paid_calls: int = 0
    cached_calls: int = 0
    budget_stopped: bool = False
    skipped: str | None = None

    def __str__(self) -> str:
        if self.skipped:
            return f"skipped ({self.skipped})"
        return (
            f"{self.problems} problems, {self.rationales} rationales ({self.valid} valid), "
            f"{self.paid_calls} paid and {self.cached_calls} cached calls"
            + (", budget exhausted" if self.budget_stopped else "")
        )


@dataclass(slots=True)
class _Job:
    id: int
    teachers: list[TeacherSpec]
    modes: list[str]
    stage_mode: str
    samples: int
    until_valid: int | None
    attempts_cap: int
    budgeted: bool


@dataclass(slots=True)
class _Slot:
    """What is known of one (problem, teacher, mode): sample index -> verdict, and the indices
    asked in this run (never asked twice in one run: a call that failed after its retries is
    asked again only by a later run or delivery)."""

    verdicts: dict[int, str] = field(default_factory=dict)
    asked: set[int] = field(default_factory=set)

    def valid(self) -> int:
        return sum(1 for v in self.verdicts.values() if v == "valid")

    def next_indices(self, job: _Job) -> list[int]:
        """Indices to ask in the next round: the first `samples` without a usable rationale,
        then (with until_valid) as many new ones as valid rationales are still missing, within
        the cap."""
        settled = {i for i, v in self.verdicts.items() if v != "failed"} | self.asked
        todo = [i for i in range(job.samples) if i not in settled]
        if todo:
            return todo
        if job.until_valid is None:
            return []
        missing = job.until_valid - self.valid()
        if missing <= 0:
            return []
        return [i for i in range(job.attempts_cap) if i not in settled][:missing]


class BudgetExhausted(Exception):
    """The job's budget cannot hold the next rationale's calls."""


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
        consensus_min_agreement: float = 0.6,
        consensus_min_votes: int = 2,
    ) -> None:
        self.engine = engine
        self.client_factory = client_factory
        self.threads = threads
        self.sandbox_parallelism = sandbox_parallelism
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
                self._sandbox = Sandbox(parallelism=self.sandbox_parallelism).start()
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

    def process_chunk(self, job_id: int, chunk: int) -> ChunkReport:
        report = ChunkReport(job_id, chunk)
        job = self._start(job_id)
        if job is None:
            report.skipped = "the job is finished, cancelled or gone"
            return report
        with Session(self.engine) as session, session.begin():
            pending = [pid for pid, state in chunk_problems(session, job_id, chunk) if state == "pending"]
            if pending:
                count_attempt(session, job_id, pending)
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
        failures: dict[int, tuple[str, str]] = {}
        budget_hit: set[int] = set()
        round_no = 0
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
            results = list(self._pool.map(lambda item: self._ask(job, item), items))
            self._judge(results, problems)
            rows = []
            for result in results:
                item = result.item
                if result.outcome is None:
                    budget_hit.add(item.problem.id)
                    report.budget_stopped = True
                    continue
                rows.append(self._row(job_id, result))
                verdict = rows[-1]["verdict"]
                slot = slots[(item.problem.id, item.teacher.label, item.mode)]
                slot.verdicts[item.sample_index] = verdict
                slot.asked.add(item.sample_index)
                report.rationales += 1
                report.valid += verdict == "valid"
                report.paid_calls += result.outcome.paid_calls
                report.cached_calls += result.outcome.cached_calls
                if isinstance(result.outcome.result, CallFailure):
                    failures[item.problem.id] = (result.outcome.result.kind, result.outcome.result.message)
            with Session(self.engine) as session, session.begin():
                upsert_rationales(session, rows)
            log.debug("job %s chunk %s round %s: %d rationales", job_id, chunk, round_no, len(rows))
        self._close_problems(job_id, problems, failures, budget_hit)
        return report

    # --- steps -------------------------------------------------------------------------------

    def _start(self, job_id: int) -> _Job | None:
        with Session(self.engine) as session, session.begin():
            row = session.get(GenerationJob, job_id)
            if row is None or row.status in JOB_TERMINAL_STATUSES:
                return None
            if row.status == "queued":
                session.execute(
                    update(GenerationJob)
                    .where(GenerationJob.id == job_id, GenerationJob.status == "queued")
                    .values(status="running", started_at=datetime.now(UTC))
                )
            return _Job(
                id=row.id,
                teachers=[parse_spec(t["spec"]) for t in row.teachers],
                modes=list(row.modes),
                stage_mode=row.stage_mode,
                samples=row.samples,
                until_valid=row.until_valid,
                attempts_cap=row.max_attempts if row.max_attempts is not None else row.samples,
                budgeted=row.budget_usd is not None,
            )

    def _stopped(self, job_id: int) -> bool:
        with Session(self.engine) as session:
            status = session.scalar(select(GenerationJob.status).where(GenerationJob.id == job_id))
        return status is None or status in JOB_TERMINAL_STATUSES

    def _known_slots(self, job: _Job, problems: list[ProblemRow]) -> dict[tuple[int, str, str], _Slot]:
        slots: dict[tuple[int, str, str], _Slot] = defaultdict(_Slot)
        ids = [p.id for p in problems]
        with Session(self.engine) as session:
            for teacher in job.teachers:
                for mode in job.modes:
                    version = prompt_set_version(mode, job.stage_mode)  # type: ignore[arg-type]
                    stored = existing_rationales(session, ids, teacher.provider, teacher.model, mode, version)
                    for problem_id, verdicts in stored.items():
                        slots[(problem_id, teacher.label, mode)].verdicts.update(verdicts)
        return slots

    def _ask(self, job: _Job, item: WorkItem) -> ItemResult:
        client = self.client(item.teacher)
        work = RationaleWork(
            question=item.problem.question,
            mode=item.mode,  # type: ignore[arg-type]
            stage_mode=job.stage_mode,  # type: ignore[arg-type]
            sample_index=item.sample_index,
            problem_id=item.problem.id,
        )
        if not job.budgeted:
            return ItemResult(item, produce_rationale(self.engine, client, work))
        reserved = cost_bound(client, work)
        with Session(self.engine) as session, session.begin():
            if not reserve_budget(session, job.id, reserved):
                return ItemResult(item, None)
        outcome: RationaleOutcome | None = None
        try:
            outcome = produce_rationale(self.engine, client, work)
        finally:
            with Session(self.engine) as session, session.begin():
                settle_budget(session, job.id, reserved, _spent(outcome, reserved))
        return ItemResult(item, outcome)

    def _judge(self, results: list[ItemResult], problems: list[ProblemRow]) -> None:
        """Fill in each result's verdict: programs run in the sandbox, then matching."""
        judged = [(r, kp) for r in results if (kp := _key_points(r)) is not None]
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

    def _close_problems(
        self,
        job_id: int,
        problems: list[ProblemRow],
        failures: dict[int, tuple[str, str]],
        budget_hit: set[int],
    ) -> None:
        states: dict[int, tuple[str, str | None, str | None]] = {}
        for problem in problems:
            if problem.id in budget_hit:
                states[problem.id] = ("budget", "budget", "the job's budget ran out before this problem")
            elif problem.id in failures:
                kind, message = failures[problem.id]
                states[problem.id] = ("failed", kind, message[:2000])
            else:
                states[problem.id] = ("done", None, None)
        with Session(self.engine) as session, session.begin():
            set_problem_states(session, job_id, states)
            if budget_hit:
                job = session.get(GenerationJob, job_id, with_for_update=True)
                if job is not None and job.status not in JOB_TERMINAL_STATUSES:
                    stop_pending(session, job_id, "budget", "the job's budget ran out")
                    job.status = "budget_exhausted"
                    job.stop_reason = (
                        f"budget of ${job.budget_usd} reached (spent ${job.spent_usd}); "
                        "no further calls were issued"
                    )
                    job.finished_at = datetime.now(UTC)
        self._finish(job_id)

    def _finish(self, job_id: int) -> None:
        with Session(self.engine) as session, session.begin():
            finish_if_done(session, job_id)


def cost_bound(client: TeacherClient, work: RationaleWork) -> Decimal:
    """An upper bound of what `work`'s calls can cost: every stage's prompt at 1 token per
    2 characters (later stages also carry earlier answers) and `max_tokens` out per call."""
    price = client.price
    if price is None:
        raise BudgetExhausted(f"{client.label} has no price: a budgeted job cannot bound its cost")
    prompt = render_prompt(work.question, work.mode, "single")
    prompt_chars = len(prompt.system) + sum(len(str(m.get("content", ""))) for m in prompt.messages)
    max_out = client.spec.options.max_tokens
    tokens_in = prompt_chars // _CHARS_PER_TOKEN_BOUND + 16
    if work.stage_mode == "single":
        return price.cost(tokens_in, max_out)
    return 3 * price.cost(tokens_in + 2 * max_out, max_out)


def _spent(outcome: RationaleOutcome | None, reserved: Decimal) -> Decimal:
    """What the calls cost: the reported cost, or the whole reservation when it is unknown
    (a crash mid-call may have paid for something)."""
    if outcome is None or outcome.cost_usd is None:
        return reserved
    return outcome.cost_usd


def _key_points(result: ItemResult) -> KeyPoints | None:
    if result.outcome is None:
        return None
    got = result.outcome.result
    return got if isinstance(got, KeyPoints) else None
