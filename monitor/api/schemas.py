"""Pydantic models of the HTTP API's requests and responses, which also document the OpenAPI schema.

The flag models are shared with the `flags` command, so its `--json` output
matches the API's. No model here carries conversation or reply text except
`ExchangeDetail.messages` and `ExchangeDetail.reply`, which only reviewers get.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from storage.flags import MAX_REVIEW_NOTE_CHARS
from storage.models import FlagEventRecord, FlagRecord

FlagStatus = Literal["open", "acknowledged", "resolved", "false_positive"]
Severity = Literal["low", "medium", "high", "critical"]


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx response."""

    detail: str = Field(description="What failed and how to fix it.")


class SentinelRisk(BaseModel):
    """One sentinel's part of a user's risk in one window (docs/risk.md defines each number)."""

    sentinel: str
    answered: int = Field(description="The user's answered, non-override exchanges scored for this sentinel.")
    expected_bypassed: float = Field(description="E: the sum of this sentinel's probability over those exchanges.")
    population_mean: float
    population_std: float
    expected_from_population: float = Field(description="n times the population's mean probability.")
    allowance: float = Field(description="z times the population's standard deviation of E for n exchanges.")
    excess: float = Field(description="max(0, E - n*mean - allowance).")


class RiskEvidence(BaseModel):
    """An answered exchange among the user's highest probabilities in the window."""

    exchange_id: str
    sentinel: str
    prob: float


class WindowRisk(BaseModel):
    """A user's risk over one rolling window ending now."""

    window_s: int
    exchanges: int
    answered: int
    injection_attempts: int
    slip_throughs: dict[str, int] = Field(description="Slip-throughs per sentinel.")
    max_prob: dict[str, float] = Field(description="Highest probability per sentinel among answered exchanges.")
    expected_bypassed: float = Field(description="Expected number of bypassed refusals, summed over sentinels.")
    sentinels: list[SentinelRisk]
    risk: float = Field(description="Risk score from 0 to 1.")
    previous_risk: float = Field(description="Risk score over the window before this one.")
    trend: float = Field(description="risk - previous_risk.")
    evidence: list[RiskEvidence]


class UserRiskReport(BaseModel):
    """The response of GET /v1/users/{user_id}/risk, equal to `sentinel-monitor users risk USER --json`."""

    user_id: str
    windows: list[WindowRisk]


class RankedUser(BaseModel):
    """A user in the ranking by slip-throughs."""

    user_id: str
    exchanges: int
    slip_throughs: int
    overrides: int
    injection_attempts: int
    max_prob: float = Field(description="Highest probability among the user's slip-throughs.")
    max_prob_by_sentinel: dict[str, float]
    flag_status: str | None = Field(description="open or acknowledged when the user has an active flag.")
    risk: float | None = Field(description="Risk score over the window.")


class TopUsers(BaseModel):
    """The response of GET /v1/users/top, equal to `sentinel-monitor users top --json`."""

    window_s: float
    users: list[RankedUser]


class Flag(BaseModel):
    """A flag against a user under one rule, with its review state."""

    id: int
    user_id: str
    rule: str
    status: FlagStatus
    severity: Severity
    firing: bool = Field(description="Whether the user met the rule at the flag job's latest evaluation.")
    firing_since: datetime | None
    opened_at: datetime
    updated_at: datetime
    escalated_at: datetime | None
    window_s: int
    slip_through_count: int
    max_prob: float
    evidence: dict[str, Any] = Field(description="Exchange ids, their probabilities and the risk numbers.")
    reviewed_by: str | None
    reviewed_at: datetime | None
    review_note: str | None

    @classmethod
    def from_record(cls, record: FlagRecord) -> Flag:
        return cls(
            id=record.id,
            user_id=record.user_id,
            rule=record.rule,
            status=record.status,  # type: ignore[arg-type]
            severity=record.severity,  # type: ignore[arg-type]
            firing=record.firing,
            firing_since=record.firing_since,
            opened_at=record.opened_at,
            updated_at=record.updated_at,
            escalated_at=record.escalated_at,
            window_s=record.window_s,
            slip_through_count=record.slip_through_count,
            max_prob=record.max_prob,
            evidence=record.evidence,
            reviewed_by=record.reviewed_by,
            reviewed_at=record.reviewed_at,
            review_note=record.review_note,
        )


class FlagEvent(BaseModel):
    """One transition in a flag's history."""

    id: int
    at: datetime
    kind: str = Field(description="opened, reopened, escalated, recovered, or the status a reviewer set.")
    actor: str = Field(description="flag_job, or the name of the token that reviewed the flag.")
    note: str | None
    detail: dict[str, Any]

    @classmethod
    def from_record(cls, record: FlagEventRecord) -> FlagEvent:
        return cls(
            id=record.id, at=record.at, kind=record.kind, actor=record.actor, note=record.note, detail=record.detail
        )


class FlagDetail(Flag):
    """A flag with its history, oldest event first."""

    events: list[FlagEvent]


class FlagList(BaseModel):
    """Flags matching the filters, most recently updated first."""

    flags: list[Flag]


class FlagReview(BaseModel):
    """A reviewer's decision on a flag."""

    status: FlagStatus
    note: str | None = Field(default=None, max_length=MAX_REVIEW_NOTE_CHARS, description="Why; stored with the event.")


class HistoryExchange(BaseModel):
    """One of a user's exchanges, without its text."""

    id: str
    created_at: datetime
    model: str
    outcome: str = Field(description="refused, answered or unknown.")
    decided_by: str
    outcome_sentinel: str | None
    override: bool
    slip_through: bool
    max_slip_prob: float | None
    injection_attempts: int
    probabilities: dict[str, float] = Field(description="Probability per sentinel.")
    slip_through_sentinels: list[str]


class UserHistory(BaseModel):
    """A user's latest exchanges, newest first, and every flag against the user."""

    user_id: str
    exchanges: list[HistoryExchange]
    flags: list[Flag]


class Score(BaseModel):
    """One sentinel's score of an exchange and what computed it."""

    sentinel: str
    prob: float
    logprob: float | None = Field(description="Natural log of prob; null when prob is 0.")
    threshold: float | None
    slip_through: bool
    model_id: str
    template_sha256: str
    tokenizer_sha256: str
    scored_at: datetime


class ChatMessage(BaseModel):
    role: str
    content: str


class ExchangeDetail(BaseModel):
    """One exchange: outcome, scores and injection findings; the text only for reviewers."""

    id: str
    user_id: str
    model: str
    created_at: datetime
    ingested_at: datetime
    source_format: str
    outcome: str
    decided_by: str
    outcome_sentinel: str | None
    outcome_detail: str | None = Field(description="The refusal phrase the detector matched, if it decided.")
    override: bool
    override_reason: str | None
    slip_through: bool
    max_slip_prob: float | None
    prompt_tokens: int
    truncated: bool
    kafka_topic: str | None
    kafka_partition: int | None
    kafka_offset: int | None
    injection_attempts: int
    injection_findings: list[dict[str, Any]] = Field(
        description="Sentinel, message index, role, disguises and character span of each attempt; never the text."
    )
    scores: list[Score]
    raw_text: Literal["included", "hidden", "not_stored"] = Field(
        description="included for reviewers; hidden for viewers; not_stored when the text was not kept or was purged."
    )
    messages: list[ChatMessage] | None
    reply: str | None
    metadata: dict[str, Any] | None = Field(description="The serving stack's metadata; reviewers only.")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """Whether the API can answer: PostgreSQL reachable and its schema at the revision this version ships."""

    status: Literal["ready", "unavailable"]
    schema_revision: str | None
    head_revision: str | None
    reason: str | None


class AllowlistEntry(BaseModel):
    """A trusted-user allowlist entry that was in force during the audit period."""

    id: int
    user_id: str
    state: Literal["active", "expired", "revoked"] = Field(description="The entry's state at the time of the query.")
    reason: str
    approver: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None


class OverrideExchange(BaseModel):
    """An override exchange, without its text."""

    id: str
    user_id: str
    model: str
    created_at: datetime
    outcome: str
    outcome_decided_by: str
    override_reason: str | None
    probabilities: dict[str, float]
    slip_through: bool = Field(description="Would have counted towards a flag had it not been an override.")
    slip_through_sentinels: list[str]


class UserExclusions(BaseModel):
    """A user's slip-throughs in the period that were left out of flags."""

    user_id: str
    override_exchanges: int
    override_slip_throughs: int
    allowlisted_slip_throughs: int
    excluded_slip_throughs: int
    trusted_now: bool


class OverrideAudit(BaseModel):
    """The allowlist entries, override exchanges and excluded slip-throughs of the period `since < t <= until`."""

    since: datetime | None
    until: datetime
    now: datetime
    user_id: str | None
    limit: int
    allowlist: list[AllowlistEntry]
    override_exchange_count: int = Field(description="All override exchanges of the period; `exchanges` lists the newest.")
    exchanges: list[OverrideExchange]
    users: list[UserExclusions]
