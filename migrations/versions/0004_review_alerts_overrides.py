"""Tables for flag rules and review, alerts, the trusted-user allowlist, job watermarks and cached baselines.

- `flags` gains `severity`, `firing` (the user met the rule at the latest
  evaluation), `firing_since`, `escalated_at` and the latest review
  (`reviewed_by`, `reviewed_at`, `review_note`).
- `flag_events` keeps every transition of a flag, by the flag job or a reviewer.
- `alerts` holds one row per notification, unique by `dedup_key`, written in the
  same transaction as the flag change that caused it; `alert_deliveries` holds
  its state per sink, and `alert_sinks` each sink's failure count and whether
  it is disabled.
- `trusted_users` is the allowlist: reason, approver, expiry and revocation.
- `job_watermarks` stores how far a job has read, by ingestion time.
- `population_baselines` caches the population's probability sums per window.
- `exchanges.ingested_at` gets an index for the incremental jobs, and the
  override exchanges a partial index by time for the audit view. As in 0003,
  the indexes are built inside the migration's transaction; on a large table,
  build them beforehand with CREATE INDEX CONCURRENTLY and this migration
  finds them.

Revision ID: 0004
Revises: 0003
Created: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEVERITIES = "severity IN ('low', 'medium', 'high', 'critical')"


def upgrade() -> None:
    _extend_flags()
    _create_flag_events()
    _create_alert_tables()
    _create_trusted_users()
    _create_job_tables()
    op.execute("CREATE INDEX IF NOT EXISTS ix_exchanges_ingested_at ON exchanges (ingested_at)")
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_exchanges_overrides ON exchanges (created_at) WHERE override_trusted"
    )


def downgrade() -> None:
    op.drop_index("ix_exchanges_overrides", table_name="exchanges")
    op.drop_index("ix_exchanges_ingested_at", table_name="exchanges")
    for table in (
        "population_baselines",
        "job_watermarks",
        "trusted_users",
        "alert_deliveries",
        "alert_sinks",
        "alerts",
        "flag_events",
    ):
        op.drop_table(table)
    op.drop_constraint("ck_flags_severity", "flags", type_="check")
    for column in ("review_note", "reviewed_at", "reviewed_by", "escalated_at", "firing_since", "firing", "severity"):
        op.drop_column("flags", column)


def _extend_flags() -> None:
    op.add_column("flags", sa.Column("severity", sa.Text(), server_default=sa.text("'medium'"), nullable=False))
    op.add_column("flags", sa.Column("firing", sa.Boolean(), server_default=sa.text("true"), nullable=False))
    op.add_column("flags", sa.Column("firing_since", sa.DateTime(timezone=True), nullable=True))
    op.add_column("flags", sa.Column("escalated_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("flags", sa.Column("reviewed_by", sa.Text(), nullable=True))
    op.add_column("flags", sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("flags", sa.Column("review_note", sa.Text(), nullable=True))
    op.create_check_constraint("ck_flags_severity", "flags", SEVERITIES)


def _create_flag_events() -> None:
    op.create_table(
        "flag_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("flag_id", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("detail", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.ForeignKeyConstraint(["flag_id"], ["flags.id"], name="fk_flag_events_flag_id_flags", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_flag_events"),
    )
    op.create_index("ix_flag_events_flag_id_at", "flag_events", ["flag_id", "at"])


def _create_alert_tables() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("dedup_key", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("flag_id", sa.BigInteger(), nullable=True),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column("rule", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.CheckConstraint(SEVERITIES, name="ck_alerts_severity"),
        sa.ForeignKeyConstraint(["flag_id"], ["flags.id"], name="fk_alerts_flag_id_flags", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
        sa.UniqueConstraint("dedup_key", name="uq_alerts_dedup_key"),
    )
    op.create_index("ix_alerts_flag_id_created_at", "alerts", ["flag_id", "created_at"])
    op.create_table(
        "alert_sinks",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_alert_sinks"),
    )
    op.create_table(
        "alert_deliveries",
        sa.Column("alert_id", sa.BigInteger(), nullable=False),
        sa.Column("sink", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="ck_alert_deliveries_status"),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name="fk_alert_deliveries_alert_id_alerts", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("alert_id", "sink", name="pk_alert_deliveries"),
    )
    op.create_index(
        "ix_alert_deliveries_pending",
        "alert_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def _create_trusted_users() -> None:
    op.create_table(
        "trusted_users",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("approver", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.Text(), nullable=True),
        sa.CheckConstraint("expires_at > created_at", name="ck_trusted_users_expiry_after_creation"),
        sa.PrimaryKeyConstraint("id", name="pk_trusted_users"),
    )
    op.create_index("ix_trusted_users_user_id_expires_at", "trusted_users", ["user_id", "expires_at"])


def _create_job_tables() -> None:
    op.create_table(
        "job_watermarks",
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job", name="pk_job_watermarks"),
    )
    op.create_table(
        "population_baselines",
        sa.Column("window_s", sa.Integer(), nullable=False),
        sa.Column("sentinel", sa.Text(), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Double(), nullable=False),
        sa.Column("total_squares", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("window_s", "sentinel", name="pk_population_baselines"),
    )
