"""teacher calls: response cache and cost ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "teacher_calls",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("problem_id", sa.BigInteger(), nullable=True),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("stage_mode", sa.String(length=8), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("prompt_version", sa.String(length=128), nullable=False),
        sa.Column("sample_index", sa.Integer(), server_default="0", nullable=False),
        sa.Column("options", _JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_kind", sa.String(length=32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("finish_reason", sa.String(length=16), nullable=True),
        sa.Column("response_text", sa.Text(), nullable=True),
        sa.Column("tokens_in", sa.Integer(), nullable=True),
        sa.Column("tokens_out", sa.Integer(), nullable=True),
        sa.Column("cost_usd", sa.Numeric(precision=14, scale=8), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("response", _JSON, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("status IN ('ok', 'refused', 'failed')", name=op.f("ck_teacher_calls_status")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_teacher_calls_attempts")),
        sa.CheckConstraint("sample_index >= 0", name=op.f("ck_teacher_calls_sample_index")),
        sa.ForeignKeyConstraint(
            ["problem_id"],
            ["problems.id"],
            name=op.f("fk_teacher_calls_problem_id_problems"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teacher_calls")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_teacher_calls_fingerprint")),
    )
    op.create_index(op.f("ix_teacher_calls_problem_id"), "teacher_calls", ["problem_id"], unique=False)
    op.create_index(
        op.f("ix_teacher_calls_provider_model"), "teacher_calls", ["provider", "model"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_teacher_calls_provider_model"), table_name="teacher_calls")
    op.drop_index(op.f("ix_teacher_calls_problem_id"), table_name="teacher_calls")
    op.drop_table("teacher_calls")
