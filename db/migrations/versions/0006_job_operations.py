"""job operations: deployment identity, failures, chunk leases, job rationales, budget holds,
in-flight teacher calls, options in a rationale's identity

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _created() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    deployment = op.create_table(
        "deployment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.String(length=36), nullable=False),
        _created(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment")),
    )
    op.bulk_insert(deployment, [{"id": 1, "deployment_id": str(uuid.uuid4())}])

    op.create_table(
        "job_failures",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=True),
        sa.Column("problem_id", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("problems", sa.Integer(), server_default="0", nullable=False),
        _created(),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["generation_jobs.id"],
            name=op.f("fk_job_failures_job_id_generation_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_failures")),
    )
    op.create_index(op.f("ix_job_failures_job_id_kind"), "job_failures", ["job_id", "kind"], unique=False)

    op.create_table(
        "job_chunks",
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("deliveries", sa.Integer(), server_default="0", nullable=False),
        sa.Column("enqueue_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["generation_jobs.id"],
            name=op.f("fk_job_chunks_job_id_generation_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "chunk", name=op.f("pk_job_chunks")),
    )
    # Chunks of jobs made before this migration: one row each, as if queued when the job was.
    op.execute(
        "INSERT INTO job_chunks (job_id, chunk, queued_at, deliveries) "
        "SELECT jp.job_id, jp.chunk, MIN(j.created_at), 0 FROM job_problems jp "
        "JOIN generation_jobs j ON j.id = jp.job_id GROUP BY jp.job_id, jp.chunk"
    )

    op.create_table(
        "job_rationales",
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("rationale_id", sa.BigInteger(), nullable=False),
        sa.Column("reused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        _created(),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["generation_jobs.id"],
            name=op.f("fk_job_rationales_job_id_generation_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["rationale_id"],
            ["rationales.id"],
            name=op.f("fk_job_rationales_rationale_id_rationales"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "rationale_id", name=op.f("pk_job_rationales")),
    )
    op.create_index(op.f("ix_job_rationales_rationale_id"), "job_rationales", ["rationale_id"], unique=False)
    # Rationales of earlier jobs: the ones each job produced.
    op.execute(
        "INSERT INTO job_rationales (job_id, rationale_id, reused, verdict) "
        "SELECT job_id, id, false, verdict FROM rationales WHERE job_id IS NOT NULL"
    )

    op.create_table(
        "budget_holds",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("amount_usd", sa.Numeric(precision=14, scale=8), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
        _created(),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["generation_jobs.id"],
            name=op.f("fk_budget_holds_job_id_generation_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_holds")),
    )
    op.create_index(op.f("ix_budget_holds_job_id"), "budget_holds", ["job_id"], unique=False)

    with op.batch_alter_table("generation_jobs") as batch:
        batch.add_column(sa.Column("submitted_config", JSON, nullable=True))

    with op.batch_alter_table("teacher_calls") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("claim_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("estimated_cost_usd", sa.Numeric(precision=14, scale=8), nullable=True))
        batch.drop_constraint(op.f("ck_teacher_calls_status"), type_="check")
        batch.create_check_constraint("status", "status IN ('ok', 'refused', 'failed', 'in_flight')")

    op.create_index(op.f("ix_rationales_created_at"), "rationales", ["created_at"], unique=False)
    op.create_index(op.f("ix_teacher_calls_created_at"), "teacher_calls", ["created_at"], unique=False)

    with op.batch_alter_table("rationales") as batch:
        batch.add_column(sa.Column("options_key", sa.String(length=16), server_default="", nullable=False))
        batch.drop_constraint("uq_rationales_identity", type_="unique")
        batch.create_unique_constraint(
            "uq_rationales_identity",
            ["problem_id", "provider", "model", "mode", "prompt_version", "sample_index", "options_key"],
        )


def downgrade() -> None:
    op.drop_index(op.f("ix_teacher_calls_created_at"), table_name="teacher_calls")
    op.drop_index(op.f("ix_rationales_created_at"), table_name="rationales")
    with op.batch_alter_table("rationales") as batch:
        batch.drop_constraint("uq_rationales_identity", type_="unique")
        batch.create_unique_constraint(
            "uq_rationales_identity",
            ["problem_id", "provider", "model", "mode", "prompt_version", "sample_index"],
        )
        batch.drop_column("options_key")
    op.execute("DELETE FROM teacher_calls WHERE status = 'in_flight'")
    with op.batch_alter_table("teacher_calls") as batch:
        batch.drop_constraint(op.f("ck_teacher_calls_status"), type_="check")
        batch.create_check_constraint("status", "status IN ('ok', 'refused', 'failed')")
        batch.drop_column("estimated_cost_usd")
        batch.drop_column("claim_until")
        batch.drop_column("claimed_by")
    with op.batch_alter_table("generation_jobs") as batch:
        batch.drop_column("submitted_config")
    op.drop_index(op.f("ix_budget_holds_job_id"), table_name="budget_holds")
    op.drop_table("budget_holds")
    op.drop_index(op.f("ix_job_rationales_rationale_id"), table_name="job_rationales")
    op.drop_table("job_rationales")
    op.drop_table("job_chunks")
    op.drop_index(op.f("ix_job_failures_job_id_kind"), table_name="job_failures")
    op.drop_table("job_failures")
    op.drop_table("deployment")
