"""Who may work a chunk: the deployment it belongs to, and the settings its job was submitted with.

**Deployment identity.** Every database has one deployment id (`deployment`, row 1, a uuid made
by migration 0006). The submitter (`kpdd generate`, `kpdd resume`, the reconciler) reads it and
every chunk task carries it (`deployment=` keyword; messages queued before this existed carry
none and are accepted). A worker whose own database has another id refuses the task before it
reads or writes anything of the job (the job ids of one database mean other jobs in another):
it logs one line (at most once a minute per foreign deployment and process), waits
`REFUSAL_PAUSE_S`, and rejects the message with requeue, so it goes back to the queue for a
worker of the right deployment. It is never acknowledged, so it is not lost; while no right
worker consumes the queue it keeps coming back, at most once per pause per wrong worker.
Note: a database cloned from another (`CREATE DATABASE ... TEMPLATE`, a restored dump) keeps
the other's id; give the copy its own (`UPDATE deployment SET deployment_id = gen_random_uuid()`)
before its workers share a broker with the original.

**Submitted configuration.** `kpdd generate` records in `generation_jobs.submitted_config`
what its own configuration says about things that change a job's results (booleans and
digests, never a secret):

- `KPDD_SIM_URL` (the URL, credentials redacted): a worker whose own differs refuses the chunk
  when a teacher is `sim:` without `@URL` (it would ask another simulator, or start its own).
- provider keys (per teacher: the variable, and whether it is set): a worker without a key the
  job's teacher needs refuses the chunk (its calls could only fail).
- the price table (sha256 of the job's teachers' effective prices, `KPDD_PRICES_FILE` laid over
  the shipped table): a worker whose prices differ refuses a budgeted job's chunks (the budget
  would be held at other prices); for a job without a budget it warns and goes on (the costs it
  records follow its own table).

Both refusals and warnings are recorded on the job as a `job_failures` row of kind
`config_mismatch` naming the setting (one row per job, worker and setting, however many chunks
it meets), so `kpdd status` shows them. A refused chunk goes back to the queue like a foreign
deployment's (above): a rightly configured worker takes it; with none, the job waits, its
failures saying why. Jobs submitted before this existed (no `submitted_config`) are not checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db.models import JOB_TERMINAL_STATUSES, GenerationJob
from db.queries.operations import add_job_failure, deployment_id
from services.config import Settings, get_settings
from services.errors import ConfigError
from services.generation.chunks import worker_id
from services.teachers.keys import DEFAULT_KEY_VARIABLES
from services.teachers.pricing import PriceTable, load_prices
from services.teachers.spec import TeacherSpec, parse_spec, redact_spec

log = logging.getLogger(__name__)

CONFIG_MISMATCH = "config_mismatch"
# A refused task waits this long before going back to the queue, so that a wrong worker does not
# spin on it.
REFUSAL_PAUSE_S = 2.0
# A refusal of the same kind is logged at most once a minute per process.
REFUSAL_LOG_EVERY_S = 60.0
CONFIG_VERSION = 1
# Every refusal's message starts so (workers.app keeps Celery from logging it a second time).
REFUSED = "refused job "

_own_ids: dict[tuple[int, str], str] = {}
_logged: dict[str, float] = {}
_lock = threading.Lock()


def own_deployment_id(engine: Engine) -> str:
    """This database's deployment id, read once per process (it never changes)."""
    key = (os.getpid(), str(engine.url))
    with _lock:
        known = _own_ids.get(key)
    if known is not None:
        return known
    with Session(engine) as session:
        found = deployment_id(session)
    if found is None:
        raise ConfigError(
            "the database has no deployment id (table `deployment`, row 1): run `kpdd db upgrade`"
        )
    with _lock:
        _own_ids[key] = found
    return found


# --- submitted configuration ------------------------------------------------------------------


def key_variable(spec: TeacherSpec) -> str | None:
    """The environment variable the teacher's key is read from (None: it needs none)."""
    return spec.options.api_key_env or DEFAULT_KEY_VARIABLES.get(spec.provider)


def prices_digest(specs: Sequence[TeacherSpec], prices: PriceTable) -> str:
    """sha256 of the effective price of each teacher (the only prices a job uses)."""
    effective: dict[str, Any] = {}
    for spec in sorted(specs, key=lambda s: s.label):
        price = prices.price_of(spec.provider, spec.model)
        effective[spec.label] = (
            None if price is None else [str(price.input_per_mtok), str(price.output_per_mtok)]
        )
    return "sha256:" + hashlib.sha256(json.dumps(effective, sort_keys=True).encode()).hexdigest()


def job_config(specs: Sequence[TeacherSpec], settings: Settings | None = None) -> dict[str, Any]:
    """What this process's configuration says about the settings that change a job's results."""
    settings = settings or get_settings()
    keys: dict[str, dict[str, Any]] = {}
    for spec in specs:
        variable = key_variable(spec)
        if variable is not None:
            keys[spec.label] = {"variable": variable, "present": bool(os.environ.get(variable, "").strip())}
    return {
        "version": CONFIG_VERSION,
        "sim_url": redact_spec(settings.sim_url) if settings.sim_url else None,
        "prices_digest": prices_digest(specs, load_prices(settings.prices_file)),
        "keys": keys,
    }


@dataclass(slots=True, frozen=True)
class Mismatch:
    setting: str
    refuse: bool
    message: str


def config_mismatches(
    submitted: dict[str, Any], own: dict[str, Any], specs: Sequence[TeacherSpec], budgeted: bool
) -> list[Mismatch]:
    """How this worker's configuration (`own`) differs from the job's, in ways that matter."""
    found: list[Mismatch] = []
    implicit_sim = any(s.provider == "sim" and s.base_url is None for s in specs)
    if implicit_sim and submitted.get("sim_url") != own.get("sim_url"):
        found.append(
            Mismatch(
                "KPDD_SIM_URL",
                True,
                f"KPDD_SIM_URL differs from the submitter's (job: {submitted.get('sim_url') or 'unset'}, "
                f"worker: {own.get('sim_url') or 'unset'}): its sim: teachers would ask another simulator",
            )
        )
    for label, wanted in sorted((submitted.get("keys") or {}).items()):
        mine = (own.get("keys") or {}).get(label)
        if wanted.get("present") and not (mine and mine.get("present")):
            variable = (mine or wanted).get("variable")
            found.append(
                # Not refused: the chunk runs and fails the job at once with the missing key
                # (services.generation.failures), so a job that no worker can serve ends, with
                # the reason, instead of bouncing between workers forever.
                Mismatch(variable, False, f"{variable} is not set on this worker; teacher {label} needs it")
            )
    if submitted.get("prices_digest") != own.get("prices_digest"):
        if budgeted:
            text = "the job's budget would be held at other prices"
        else:
            text = "warning only: the costs this worker records follow its own table"
        found.append(
            Mismatch(
                "KPDD_PRICES_FILE",
                budgeted,
                f"the price table (KPDD_PRICES_FILE) gives this job's teachers other prices than the "
                f"submitter's; {text}",
            )
        )
    return found


# --- admission --------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Refusal:
    """Why a worker does not run a task; `log` is False for a repeat within the minute."""

    kind: str  # deployment | config_mismatch
    message: str
    log: bool


def _first_in_a_while(key: str) -> bool:
    now = time.monotonic()
    with _lock:
        last = _logged.get(key)
        if last is not None and now - last < REFUSAL_LOG_EVERY_S:
            return False
        _logged[key] = now
        return True


def admit_chunk(engine: Engine, job_id: int, chunk: int, carried_deployment: str | None) -> Refusal | None:
    """None when this worker may run the chunk; else why not (the caller requeues the task).

    A task of another deployment is refused before anything of the job is read. A configuration
    that differs from the job's in a way that matters is recorded on the job (once per worker and
    setting); the chunk is refused when the difference changes results."""
    own = own_deployment_id(engine)
    if carried_deployment is not None and carried_deployment != own:
        return Refusal(
            "deployment",
            f"{REFUSED}{job_id} chunk {chunk}: the task belongs to deployment {carried_deployment}, "
            f"but this worker's database (KPDD_DATABASE_URL) is deployment {own}; point the worker at "
            "that deployment's database or at its own broker (the task goes back to the queue)",
            _first_in_a_while(f"deployment:{carried_deployment}"),
        )
    with Session(engine) as session:
        job = session.get(GenerationJob, job_id)
        if job is None or job.status in JOB_TERMINAL_STATUSES or not job.submitted_config:
            return None
        submitted = dict(job.submitted_config)
        specs = [parse_spec(t["spec"]) for t in job.teachers]
        budgeted = job.budget_usd is not None
    mismatches = config_mismatches(submitted, job_config(specs), specs, budgeted)
    if not mismatches:
        return None
    me = worker_id()
    with Session(engine) as session, session.begin():
        for mismatch in mismatches:
            verb = "refuses" if mismatch.refuse else "runs"
            add_job_failure(
                session,
                job_id,
                CONFIG_MISMATCH,
                f"worker {me} {verb} this job's chunks: {mismatch.message}",
                chunk=chunk,
                worker=me,
                once=True,
            )
    for mismatch in mismatches:
        if not mismatch.refuse and _first_in_a_while(f"warn:{job_id}:{mismatch.setting}"):
            log.warning("job %s: %s", job_id, mismatch.message)
    refusing = [m for m in mismatches if m.refuse]
    if not refusing:
        return None
    return Refusal(
        CONFIG_MISMATCH,
        f"{REFUSED}{job_id} chunk {chunk}: "
        + "; ".join(m.message for m in refusing)
        + " (the task goes back to the queue for a worker configured like the submitter)",
        _first_in_a_while(f"config:{job_id}:" + ",".join(m.setting for m in refusing)),
    )
