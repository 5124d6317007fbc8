"""All ORM models; importing this module registers every table on `Base.metadata`.

Each entity family lives in its own module; add new ones here so Alembic sees them.
"""

from db.models.base import Base
from db.models.batches import (
    REQUEST_OPEN_STATES,
    BatchRequest,
    ProviderBatch,
)
from db.models.corpora import GOLD_KINDS, Corpus, Problem
from db.models.generation import (
    JOB_STATUSES,
    JOB_TERMINAL_STATUSES,
    PROBLEM_STATES,
    VERDICTS,
    GenerationJob,
    JobProblem,
    Rationale,
)
from db.models.operations import BudgetHold, Deployment, JobChunk, JobFailure, JobRationale
from db.models.snapshots import Snapshot
from db.models.teachers import CALL_STATUSES, REPLAYABLE_STATUSES, TeacherCall
from db.models.training import (
    EVAL_STATES,
    RUN_LIVE_STATES,
    RUN_STATES,
    RUN_TERMINAL_STATES,
    Evaluation,
    TrainingRun,
)

__all__ = [
    "CALL_STATUSES",
    "EVAL_STATES",
    "GOLD_KINDS",
    "JOB_STATUSES",
    "JOB_TERMINAL_STATUSES",
    "PROBLEM_STATES",
    "REPLAYABLE_STATUSES",
    "REQUEST_OPEN_STATES",
    "RUN_LIVE_STATES",
    "RUN_STATES",
    "RUN_TERMINAL_STATES",
    "VERDICTS",
    "Base",
    "BatchRequest",
    "BudgetHold",
    "Corpus",
    "Deployment",
    "Evaluation",
    "GenerationJob",
    "JobChunk",
    "JobFailure",
    "JobProblem",
    "JobRationale",
    "Problem",
    "ProviderBatch",
    "Rationale",
    "Snapshot",
    "TeacherCall",
    "TrainingRun",
]
