"""A budgeted job's money around each rationale's calls: estimate, hold, call, settle.

`ask_within_budget(engine, job_id, client, work)` is what a generation thread runs per work
item of a job with `--budget-usd` (`services.generation.execute`):

1. **Estimate** what the rationale's calls will cost (`estimate_cost`): every stage's prompt
   (`services.teachers.tokens.prompt_tokens`; a staged chain's later prompts also carry the
   earlier answers) and its expected output: a high percentile of the output tokens the ledger
   has seen for the same teacher and prompt version, or `max_tokens` without that history
   (`services.teachers.tokens.OutputHistory`).
2. **Hold** that amount (`db.queries.budget.take_hold`: a `budget_holds` row with a lease that
   the process renews while the calls run). When it does not fit and other holds of the job
   are live, the item waits for them to settle, polling, while the job's other items go on;
   when it does not fit and none is live, the budget is spent: the item is not asked
   (`None`), and the job stops as `budget_exhausted`. A job that ended meanwhile (cancelled)
   ends the wait too (a `job_stopped` call failure, nothing asked).
3. **Call** (`produce_rationale`), then **settle**: the hold is released and the cost the
   providers reported is added to the job's spend. A call that raised settles the whole hold
   as spent (what was paid is unknown); a worker that dies leaves its hold to expire, counted
   as spend of unknown outcome (`db.queries.budget`).

What the guarantee is: spend stays within the budget as long as each rationale costs at most
its estimate. With history, the estimate is the 99th percentile of observed outputs, not a
bound, so a rare longer answer can take the spend past the budget by at most the excess of the
answers in flight when it ran out (prompt tokens are estimated, not bounded, either way);
`BudgetPolicy.upper_bound()` reserves `max_tokens` for every call and stops at the first hold
that does not fit (the rule before issue 10, kept as the benchmark's baseline).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db.queries.budget import renew_holds, settle_hold, take_hold
from services.kpdd.prompts import prompt_set_version, render_prompt
from services.kpdd.records import stages_of
from services.leases import LeaseKeeper, holder_id, lease_ttl_s
from services.teachers.base import TeacherClient
from services.teachers.rationale import (
    CALL_GUARD,
    STOPPED,
    CallFailure,
    RationaleOutcome,
    RationaleWork,
    produce_rationale,
)
from services.teachers.tokens import output_history, prompt_tokens

log = logging.getLogger(__name__)


class BudgetExhausted(Exception):
    """A budgeted job's cost cannot be estimated (its teacher has no price on this worker)."""


@dataclass(slots=True, frozen=True)
class BudgetPolicy:
    """How holds are sized and what happens when one does not fit (module doc)."""

    # Expect outputs from the ledger's history (else `max_tokens` for every call).
    history: bool = True
    # Wait for live holds to settle when a hold does not fit (else the job stops at once).
    wait_for_holds: bool = True
    poll_first_s: float = 0.05
    poll_max_s: float = 1.0

    @classmethod
    def upper_bound(cls) -> BudgetPolicy:
        """The rule before issue 10: `max_tokens` out for every call, stop at the first miss."""
        return cls(history=False, wait_for_holds=False)


def _renew(engine: Engine, ids: list[int], prefix: str, ttl_s: float) -> int:
    with Session(engine) as session, session.begin():
        return renew_holds(session, ids, prefix, ttl_s)


# Renews this process's budget holds while their calls run (services.leases).
HOLDS = LeaseKeeper("budget-hold", _renew)


def estimate_cost(
    engine: Engine, client: TeacherClient, work: RationaleWork, policy: BudgetPolicy | None = None
) -> Decimal:
    """What `work`'s calls are expected to cost (module doc, step 1)."""
    policy = policy or BudgetPolicy()
    price = client.price
    if price is None:
        raise BudgetExhausted(f"{client.label} has no price: a budgeted job cannot estimate its cost")
    max_tokens = client.spec.options.max_tokens
    stages = [
        render_prompt(
            work.question,
            work.mode,
            work.stage_mode,
            None if stage == "all" else stage,
            core_question="",
            solving_info=[],
        )
        for stage in stages_of(work.stage_mode)
    ]
    total = Decimal(0)
    earlier = 0  # later stages carry the earlier answers in their prompts
    for prompt in stages:
        out = max_tokens
        if policy.history:
            out = output_history().expected(
                engine, client.provider, client.spec.model, prompt.version, max_tokens
            )
        total += price.cost(prompt_tokens(prompt) + earlier, out)
        earlier += out
    return total


def ask_within_budget(
    engine: Engine,
    job_id: int,
    client: TeacherClient,
    work: RationaleWork,
    policy: BudgetPolicy | None = None,
) -> RationaleOutcome | None:
    """Run `work` within the job's budget (module doc); None when the budget is spent."""
    policy = policy or BudgetPolicy()
    holder = holder_id()
    pause = policy.poll_first_s
    while True:
        # Estimated again after every wait: the calls settled meanwhile may have made a history.
        amount = estimate_cost(engine, client, work, policy)
        with Session(engine) as session, session.begin():
            attempt = take_hold(session, job_id, amount, holder, lease_ttl_s())
        if attempt.hold_id is not None:
            break
        if attempt.status is None or attempt.live_holds == 0 or not policy.wait_for_holds:
            log.info(
                "job %s: $%s does not fit (spent $%s, held $%s of $%s): budget spent",
                job_id,
                amount,
                attempt.spent_usd,
                attempt.reserved_usd,
                attempt.budget_usd,
            )
            return None
        guard = CALL_GUARD.get()
        reason = guard() if guard is not None else None
        if reason is not None:
            version = prompt_set_version(work.mode, work.stage_mode)
            stage = stages_of(work.stage_mode)[0]
            return RationaleOutcome(client.label, version, CallFailure(stage, STOPPED, reason, False))
        time.sleep(pause)  # other holds are live: their settling may make room
        pause = min(policy.poll_max_s, pause * 1.5)
    hold_id = attempt.hold_id
    outcome: RationaleOutcome | None = None
    with HOLDS.held(engine, hold_id):
        try:
            outcome = produce_rationale(engine, client, work)
        finally:
            with Session(engine) as session, session.begin():
                settle_hold(session, job_id, hold_id, spent(outcome, amount))
    return outcome


def spent(outcome: RationaleOutcome | None, held: Decimal) -> Decimal:
    """What the calls cost: the reported cost, or the whole hold when it is unknown (the calls
    raised: something may have been paid)."""
    if outcome is None or outcome.cost_usd is None:
        return held
    return outcome.cost_usd


__all__ = ["HOLDS", "BudgetExhausted", "BudgetPolicy", "ask_within_budget", "estimate_cost", "spent"]
