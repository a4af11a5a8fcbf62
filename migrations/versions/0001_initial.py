"""Create exchanges, scores, flags and job_runs.

Revision ID: 0001
Revises:
Created: 2025-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMPTY_JSONB = sa.text("'{}'::jsonb")


def upgrade() -> None:
    _create_exchanges()
    _create_scores()
    _create_flags()
    _create_job_runs()


def downgrade() -> None:
    op.drop_table("job_runs")
    op.drop_table("flags")
    op.drop_table("scores")
    op.drop_table("exchanges")


def _create_exchanges() -> None:
    op.create_table(
        "exchanges",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("messages", postgresql.JSONB(), nullable=True),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("override_trusted", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("override_reason", sa.Text(), nullable=True),
        sa.Column("metadata", postgresql.JSONB(), server_default=EMPTY_JSONB, nullable=False),
        sa.Column("source_format", sa.Text(), nullable=False),
        sa.Column("outcome_kind", sa.Text(), nullable=False),
        sa.Column("outcome_decided_by", sa.Text(), nullable=False),
        sa.Column("outcome_sentinel", sa.Text(), nullable=True),
        sa.Column("outcome_detail", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("kafka_topic", sa.Text(), nullable=True),
        sa.Column("kafka_partition", sa.Integer(), nullable=True),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=True),
        sa.Column("slip_through", sa.Boolean(), nullable=False),
        sa.Column("max_slip_prob", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_exchanges"),
        sa.CheckConstraint(
            "outcome_kind IN ('refused', 'answered', 'unknown')", name="ck_exchanges_outcome_kind"
        ),
        sa.CheckConstraint(
            "outcome_decided_by IN ('field', 'sentinel', 'detector', 'none')",
            name="ck_exchanges_outcome_decided_by",
        ),
    )
    op.create_index("ix_exchanges_user_id_created_at", "exchanges", ["user_id", "created_at"])
    op.create_index(
        "ix_exchanges_flaggable_slip_throughs",
        "exchanges",
        ["created_at", "user_id"],
        postgresql_include=["max_slip_prob"],
        postgresql_where=sa.text("slip_through AND NOT override_trusted"),
    )


def _create_scores() -> None:
    op.create_table(
        "scores",
        sa.Column("exchange_id", sa.Text(), nullable=False),
        sa.Column("sentinel", sa.Text(), nullable=False),
        sa.Column("logprob", sa.Double(), nullable=False),
        sa.Column("prob", sa.Double(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("slip_through", sa.Boolean(), nullable=False),
        sa.Column("model_id", sa.Text(), nullable=False),
        sa.Column("template_sha256", sa.Text(), nullable=False),
        sa.Column("tokenizer_sha256", sa.Text(), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("exchange_id", "sentinel", name="pk_scores"),
        sa.ForeignKeyConstraint(
            ["exchange_id"], ["exchanges.id"], name="fk_scores_exchange_id_exchanges", ondelete="CASCADE"
        ),
    )


def _create_flags() -> None:
    op.create_table(
        "flags",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_s", sa.Integer(), nullable=False),
        sa.Column("slip_through_count", sa.Integer(), nullable=False),
        sa.Column("max_prob", sa.Double(), nullable=False),
        sa.Column("evidence", postgresql.JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_flags"),
        sa.UniqueConstraint("user_id", "rule", name="uq_flags_user_id_rule"),
        sa.CheckConstraint(
            "status IN ('open', 'acknowledged', 'resolved', 'false_positive')", name="ck_flags_status"
        ),
    )
    op.create_index("ix_flags_status_updated_at", "flags", ["status", "updated_at"])


def _create_job_runs() -> None:
    op.create_table(
        "job_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("detail", postgresql.JSONB(), server_default=EMPTY_JSONB, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_job_runs"),
        sa.CheckConstraint("status IN ('ok', 'skipped', 'failed')", name="ck_job_runs_status"),
    )
    op.create_index("ix_job_runs_job_started_at", "job_runs", ["job", "started_at"])
