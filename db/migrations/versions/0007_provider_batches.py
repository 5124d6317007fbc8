"""provider batches: batch jobs at the providers, the requests they carry, batch calls in the
ledger, chunks waiting for a batch

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
MONEY = sa.Numeric(14, 8)


def _stamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "provider_batches",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("teacher", sa.Text(), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("provider_batch_id", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("provider_status", sa.String(length=32), nullable=True),
        sa.Column("requests", sa.Integer(), server_default="0", nullable=False),
        sa.Column("succeeded", sa.Integer(), server_default="0", nullable=False),
        sa.Column("errored", sa.Integer(), server_default="0", nullable=False),
        sa.Column("expired", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cancelled", sa.Integer(), server_default="0", nullable=False),
        sa.Column("hold_id", sa.BigInteger(), nullable=True),
        sa.Column("reserved_usd", MONEY, nullable=True),
        sa.Column("cost_usd", MONEY, nullable=True),
        sa.Column("online_cost_usd", MONEY, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("submitting_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        *_stamps(),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["generation_jobs.id"],
            name=op.f("fk_provider_batches_job_id_generation_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_batches")),
        sa.UniqueConstraint("tag", name=op.f("uq_provider_batches_tag")),
    )
    op.create_index(op.f("ix_provider_batches_state"), "provider_batches", ["state"], unique=False)
    op.create_index(op.f("ix_provider_batches_job_id"), "provider_batches", ["job_id"], unique=False)

    op.create_table(
        "batch_requests",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("problem_id", sa.BigInteger(), nullable=True),
        sa.Column("teacher", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("batch_id", sa.BigInteger(), nullable=True),
        sa.Column("submissions", sa.Integer(), server_default="0", nullable=False),
        sa.Column("body", JSON, nullable=False),
        sa.Column("intent", JSON, nullable=False),
        sa.Column("estimate_usd", MONEY, nullable=True),
        sa.Column("call_id", sa.BigInteger(), nullable=True),
        sa.Column("error_kind", sa.String(length=32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        *_stamps(),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["generation_jobs.id"],
            name=op.f("fk_batch_requests_job_id_generation_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["provider_batches.id"],
            name=op.f("fk_batch_requests_batch_id_provider_batches"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_requests")),
        sa.UniqueConstraint("job_id", "fingerprint", name=op.f("uq_batch_requests_job_id_fingerprint")),
    )
    op.create_index(
        op.f("ix_batch_requests_state_job_id"), "batch_requests", ["state", "job_id"], unique=False
    )
    op.create_index(op.f("ix_batch_requests_batch_id"), "batch_requests", ["batch_id"], unique=False)
    op.create_index(
        op.f("ix_batch_requests_job_id_chunk"), "batch_requests", ["job_id", "chunk"], unique=False
    )

    with op.batch_alter_table("teacher_calls") as batch:
        batch.add_column(sa.Column("batch_id", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("job_chunks") as batch:
        batch.add_column(sa.Column("batch_wait", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("job_chunks") as batch:
        batch.drop_column("batch_wait")
    with op.batch_alter_table("teacher_calls") as batch:
        batch.drop_column("batch_id")
    op.drop_table("batch_requests")
    op.drop_table("provider_batches")
