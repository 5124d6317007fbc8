"""generation jobs and rationales

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "generation_jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status", sa.String(length=24), server_default="queued", nullable=False),
        sa.Column("corpus_id", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=64), nullable=True),
        sa.Column(
            "teachers",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "modes",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("stage_mode", sa.String(length=8), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("until_valid", sa.Integer(), nullable=True),
        sa.Column("max_attempts", sa.Integer(), nullable=True),
        sa.Column("problem_limit", sa.Integer(), nullable=True),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("total_problems", sa.Integer(), server_default="0", nullable=False),
        sa.Column("budget_usd", sa.Numeric(precision=14, scale=6), nullable=True),
        sa.Column("spent_usd", sa.Numeric(precision=14, scale=8), server_default="0", nullable=False),
        sa.Column("reserved_usd", sa.Numeric(precision=14, scale=8), server_default="0", nullable=False),
        sa.Column(
            "params",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'completed', 'cancelled', 'budget_exhausted', 'failed')",
            name=op.f("ck_generation_jobs_status"),
        ),
        sa.CheckConstraint("samples >= 1", name=op.f("ck_generation_jobs_samples")),
        sa.ForeignKeyConstraint(
            ["corpus_id"],
            ["corpora.id"],
            name=op.f("fk_generation_jobs_corpus_id_corpora"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generation_jobs")),
    )
    op.create_index(op.f("ix_generation_jobs_corpus_id"), "generation_jobs", ["corpus_id"], unique=False)
    op.create_table(
        "job_problems",
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("problem_id", sa.BigInteger(), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error_kind", sa.String(length=32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'done', 'failed', 'budget', 'cancelled')",
            name=op.f("ck_job_problems_state"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["generation_jobs.id"],
            name=op.f("fk_job_problems_job_id_generation_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["problem_id"],
            ["problems.id"],
            name=op.f("fk_job_problems_problem_id_problems"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "problem_id", name=op.f("pk_job_problems")),
    )
    op.create_index(op.f("ix_job_problems_job_id_chunk"), "job_problems", ["job_id", "chunk"], unique=False)
    op.create_index(op.f("ix_job_problems_job_id_state"), "job_problems", ["job_id", "state"], unique=False)
    op.create_table(
        "rationales",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("problem_id", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("stage_mode", sa.String(length=8), nullable=False),
        sa.Column("prompt_version", sa.String(length=128), nullable=False),
        sa.Column("sample_index", sa.Integer(), nullable=False),
        sa.Column("core_question", sa.Text(), nullable=True),
        sa.Column(
            "solving_info",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("solution_text", sa.Text(), nullable=True),
        sa.Column("final_answer_text", sa.Text(), nullable=True),
        sa.Column("program", sa.Text(), nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("verdict_kind", sa.String(length=32), nullable=True),
        sa.Column("judged_by", sa.String(length=16), nullable=True),
        sa.Column(
            "verdict_details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "call_ids",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("cost_usd", sa.Numeric(precision=14, scale=8), nullable=True),
        sa.Column("tokens_in", sa.Integer(), nullable=True),
        sa.Column("tokens_out", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("mode IN ('cot', 'pot')", name=op.f("ck_rationales_mode")),
        sa.CheckConstraint(
            "verdict IN ('valid', 'invalid', 'unparsed', 'failed')", name=op.f("ck_rationales_verdict")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["generation_jobs.id"],
            name=op.f("fk_rationales_job_id_generation_jobs"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["problem_id"],
            ["problems.id"],
            name=op.f("fk_rationales_problem_id_problems"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rationales")),
        sa.UniqueConstraint(
            "problem_id",
            "provider",
            "model",
            "mode",
            "prompt_version",
            "sample_index",
            name="uq_rationales_identity",
        ),
    )
    op.create_index(op.f("ix_rationales_job_id"), "rationales", ["job_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_rationales_job_id"), table_name="rationales")
    op.drop_table("rationales")
    op.drop_index(op.f("ix_job_problems_job_id_state"), table_name="job_problems")
    op.drop_index(op.f("ix_job_problems_job_id_chunk"), table_name="job_problems")
    op.drop_table("job_problems")
    op.drop_index(op.f("ix_generation_jobs_corpus_id"), table_name="generation_jobs")
    op.drop_table("generation_jobs")
