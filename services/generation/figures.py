"""A job's figures, fixed as it works: the rationales it produced and the ones it reused.

`job_rationales` holds one row per (job, rationale), written while the job works a chunk:

- `produced` right after its rationales are upserted (`reused` false, the verdict just given),
  in the same transaction, so no rationale is stored without its job's record;
- `reused` once the chunk's stored rationales are known: the usable ones (not `failed`) of the
  chunk's problems by the job's teachers, in its modes and prompt versions, at the sample indices
  the job covers (below its attempts cap), with their verdict at that moment. A rationale the
  job asks again (one that had `failed`) is recorded as produced instead.

`kpdd status` counts (`db.queries.generation.rationale_counts`) and `kpdd export --job` selects
through these rows, with the recorded verdicts. A later job on the same problems (more samples,
other teachers) adds its own rows and changes nothing of an ended job's figures. The one thing
a later job can change is the text of a rationale that had failed and is asked again: the
ended job still counts it with the verdict it had (`failed`), and `--verdict valid` leaves it
out of that job's export.

Jobs made before migration 0006 have the rationales they produced (from `rationales.job_id`),
not the ones they reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db.queries.generation import record_produced
from db.queries.operations import record_reused
from services.generation.params import teacher_options_key
from services.kpdd.prompts import prompt_set_version
from services.teachers.spec import TeacherSpec

__all__ = ["record_produced", "record_reused_rationales"]


class JobScope(Protocol):
    id: int
    teachers: list[TeacherSpec]
    modes: list[str]
    stage_mode: str
    attempts_cap: int
    refresh: bool
    reuse_any_options: bool


def record_reused_rationales(engine: Engine, job: JobScope, problem_ids: Sequence[int]) -> None:
    """Record, as the job's, the usable rationales already stored for these problems that the
    job reuses: made with the job's generation options (any, with --reuse-any-options); none with
    --refresh, which makes them again. One INSERT ... SELECT per teacher and mode; ones the job
    already recorded keep their record."""
    if not problem_ids or job.refresh:
        return
    with Session(engine) as session, session.begin():
        for teacher in job.teachers:
            for mode in job.modes:
                version = prompt_set_version(mode, job.stage_mode)  # type: ignore[arg-type]
                record_reused(
                    session,
                    job.id,
                    problem_ids,
                    teacher.provider,
                    teacher.model,
                    mode,
                    version,
                    job.attempts_cap,
                    None if job.reuse_any_options else teacher_options_key(teacher),
                )
