"""SQLAlchemy models of the tables that migrations/versions creates.

The models describe the schema for queries, and Alembic revisions create it. A test
compares the two, so a column added here without a revision fails the suite.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

OUTCOME_KINDS = ("refused", "answered", "unknown")
OUTCOME_DECIDERS = ("field", "sentinel", "detector", "none")
FLAG_STATUSES = ("open", "acknowledged", "resolved", "false_positive")
JOB_RUN_STATUSES = ("ok", "skipped", "failed")
SEVERITIES = ("low", "medium", "high", "critical")
DELIVERY_STATUSES = ("pending", "delivered", "failed")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ExchangeRecord(Base):
    """One stored exchange, its outcome and a summary of its scores.

    `messages` and `reply` are NULL when database.store_raw_text is false.
    `slip_through` is true when at least one sentinel slipped through, which the
    policy only allows for answered exchanges, and `max_slip_prob` is the
    highest probability among those sentinels. `injection_attempts` counts the
    sentinels found in user-controlled messages, and `injection_findings` lists
    them (sentinel, message index, role, disguises, character span, never the
    text), or is NULL when there were none.
    """

    __tablename__ = "exchanges"
    __table_args__ = (
        CheckConstraint(_one_of("outcome_kind", OUTCOME_KINDS), name="outcome_kind"),
        CheckConstraint(_one_of("outcome_decided_by", OUTCOME_DECIDERS), name="outcome_decided_by"),
        Index("ix_exchanges_user_id_created_at", "user_id", "created_at"),
        # The newest exchanges of all users (the consistency report).
        Index("ix_exchanges_created_at", "created_at"),
        # Slip-throughs that count towards user flags, by time: the flag job and
        # the user ranking read only this index.
        Index(
            "ix_exchanges_flaggable_slip_throughs",
            "created_at",
            "user_id",
            postgresql_include=["max_slip_prob"],
            postgresql_where=text("slip_through AND NOT override_trusted"),
        ),
        # Exchanges ingested since an incremental job's watermark.
        Index("ix_exchanges_ingested_at", "ingested_at"),
        # Override exchanges by time, for the audit view.
        Index("ix_exchanges_overrides", "created_at", postgresql_where=text("override_trusted")),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    ingested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    messages: Mapped[list[dict[str, str]] | None] = mapped_column(JSONB, nullable=True)
    reply: Mapped[str | None] = mapped_column(Text, nullable=True)
    override_trusted: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    override_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    exchange_metadata: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    source_format: Mapped[str] = mapped_column(Text, nullable=False)
    outcome_kind: Mapped[str] = mapped_column(Text, nullable=False)
    outcome_decided_by: Mapped[str] = mapped_column(Text, nullable=False)
    outcome_sentinel: Mapped[str | None] = mapped_column(Text, nullable=True)
    outcome_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    truncated: Mapped[bool] = mapped_column(Boolean, nullable=False)
    kafka_topic: Mapped[str | None] = mapped_column(Text, nullable=True)
    kafka_partition: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kafka_offset: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    slip_through: Mapped[bool] = mapped_column(Boolean, nullable=False)
    max_slip_prob: Mapped[float | None] = mapped_column(Double, nullable=True)
    injection_attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    injection_findings: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB, nullable=True)

    scores: Mapped[list[ScoreRecord]] = relationship(back_populates="exchange", lazy="raise")


class ScoreRecord(Base):
    """The score of one sentinel for one exchange, with what computed it.

    `threshold` is the sentinel's threshold when the exchange was stored. It is
    NULL for a sentinel that was scored but is missing from the configured set.
    """

    __tablename__ = "scores"

    exchange_id: Mapped[str] = mapped_column(
        Text, ForeignKey("exchanges.id", ondelete="CASCADE"), primary_key=True
    )
    sentinel: Mapped[str] = mapped_column(Text, primary_key=True)
    logprob: Mapped[float] = mapped_column(Double, nullable=False)
    prob: Mapped[float] = mapped_column(Double, nullable=False)
    threshold: Mapped[float | None] = mapped_column(Double, nullable=True)
    slip_through: Mapped[bool] = mapped_column(Boolean, nullable=False)
    model_id: Mapped[str] = mapped_column(Text, nullable=False)
    template_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    tokenizer_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())

    exchange: Mapped[ExchangeRecord] = relationship(back_populates="scores", lazy="raise")


class FlagRecord(Base):
    """A finding against a user under one rule. The flag job keeps one row per (user, rule).

    `evidence` is `{"exchange_ids": [...], "probabilities": {exchange id: {sentinel: prob}},
    "risk": {"score": ..., "sentinels": [...]}}` for the slip-throughs in the last window in
    which the user met the rule (`risk` only in flags written since the risk score exists).
    """

    __tablename__ = "flags"
    __table_args__ = (
        UniqueConstraint("user_id", "rule"),
        CheckConstraint(_one_of("status", FLAG_STATUSES), name="status"),
        CheckConstraint(_one_of("severity", SEVERITIES), name="severity"),
        Index("ix_flags_status_updated_at", "status", "updated_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, nullable=False)
    rule: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    window_s: Mapped[int] = mapped_column(Integer, nullable=False)
    slip_through_count: Mapped[int] = mapped_column(Integer, nullable=False)
    max_prob: Mapped[float] = mapped_column(Double, nullable=False)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    severity: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'medium'"))
    # Whether the user met the rule at the flag job's latest evaluation; false after a recovery.
    firing: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    firing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    escalated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    review_note: Mapped[str | None] = mapped_column(Text, nullable=True)


class FlagEventRecord(Base):
    """One transition of a flag: opened, reopened, escalated, recovered, or a reviewer's status change.

    `actor` is `flag_job` for the job's changes and the reviewer's name otherwise.
    """

    __tablename__ = "flag_events"
    __table_args__ = (Index("ix_flag_events_flag_id_at", "flag_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    flag_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("flags.id", ondelete="CASCADE"), nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    actor: Mapped[str] = mapped_column(Text, nullable=False)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))


class AlertRecord(Base):
    """One notification, written in the transaction of the change that caused it; `dedup_key` makes it unique."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("dedup_key"),
        CheckConstraint(_one_of("severity", SEVERITIES), name="severity"),
        Index("ix_alerts_flag_id_created_at", "flag_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    dedup_key: Mapped[str] = mapped_column(Text, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    severity: Mapped[str] = mapped_column(Text, nullable=False)
    flag_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("flags.id", ondelete="SET NULL"), nullable=True)
    user_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    rule: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)


class AlertSinkRecord(Base):
    """One configured alert sink's health: consecutive failures, and whether it was disabled for them."""

    __tablename__ = "alert_sinks"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    consecutive_failures: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class AlertDeliveryRecord(Base):
    """The delivery of one alert to one sink: pending (with the next attempt's time), delivered, or failed."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (
        CheckConstraint(_one_of("status", DELIVERY_STATUSES), name="status"),
        Index("ix_alert_deliveries_pending", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    )

    alert_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("alerts.id", ondelete="CASCADE"), primary_key=True)
    sink: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class TrustedUserRecord(Base):
    """One allowlist entry: the user's exchanges are scored and stored but never flagged until `expires_at`.

    Revoking sets `revoked_at` and `revoked_by`; rows are never deleted, so the
    audit view shows who trusted whom, why, and until when.
    """

    __tablename__ = "trusted_users"
    __table_args__ = (
        CheckConstraint("expires_at > created_at", name="expiry_after_creation"),
        Index("ix_trusted_users_user_id_expires_at", "user_id", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    approver: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(Text, nullable=True)


class JobWatermarkRecord(Base):
    """How far an incremental job has read: exchanges ingested up to `watermark` are processed."""

    __tablename__ = "job_watermarks"

    job: Mapped[str] = mapped_column(Text, primary_key=True)
    watermark: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class PopulationBaselineRecord(Base):
    """Cached population sums of one sentinel over the window of `window_s` seconds ending at `window_end`."""

    __tablename__ = "population_baselines"

    window_s: Mapped[int] = mapped_column(Integer, primary_key=True)
    sentinel: Mapped[str] = mapped_column(Text, primary_key=True)
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    total: Mapped[float] = mapped_column(Double, nullable=False)
    total_squares: Mapped[float] = mapped_column(Double, nullable=False)


class JobRunRecord(Base):
    """One run of a scheduled job on one replica, including runs skipped because another replica held the lock."""

    __tablename__ = "job_runs"
    __table_args__ = (
        CheckConstraint(_one_of("status", JOB_RUN_STATUSES), name="status"),
        Index("ix_job_runs_job_started_at", "job", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    job: Mapped[str] = mapped_column(Text, nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
