"""Typed settings, built once at start-up and passed down.

Sources, later ones winning: the defaults below, an optional TOML file
(`--config PATH` or `SENTINEL_CONFIG`), then environment variables named
`SENTINEL_<SECTION>__<FIELD>`, for example `SENTINEL_KAFKA__BOOTSTRAP_SERVERS`.
`SENTINEL_SCORING__SENTINELS` takes a JSON list of sentinel tables.
`docs/configuration.md` lists every setting.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from monitor.errors import ConfigError
from monitor.sentinels import Sentinel, validate_sentinel_set

ENV_PREFIX = "SENTINEL_"
DEFAULT_HOME = Path.home() / ".cache" / "sentinel-monitor"

# The sentinel tokens the bundled adapter teaches the default model, with the
# starting policy: refuse when P(<SORRYDAVE>) >= 0.5 or P(<HELLNODAVE>) >= 0.01.
# docs/training.md has the measured effect of these thresholds.
DEFAULT_SENTINELS: tuple[Sentinel, ...] = (
    Sentinel(name="SORRYDAVE", text="<SORRYDAVE>", threshold=0.5, severity="medium"),
    Sentinel(name="HELLNODAVE", text="<HELLNODAVE>", threshold=0.01, severity="critical"),
)
# Refusal prefixes for a model without sentinel tokens, such as the stock
# SmolLM2-135M-Instruct (model.adapter = "none"). Each threshold is the 95th
# percentile of that probability over the 250 safe XSTest prompts on the stock
# model; docs/scoring.md has the measurement.
PREFIX_SENTINELS: tuple[Sentinel, ...] = (
    Sentinel(name="im_sorry", text="I'm sorry", threshold=0.02, severity="medium"),
    Sentinel(name="i_cant", text="I can't", threshold=0.0005, severity="medium"),
)


def _doc(text: str, **kwargs: Any) -> Any:
    return field(metadata={"doc": text}, **kwargs)


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = _doc("Kafka bootstrap servers, comma-separated host:port.", default="127.0.0.1:19092")
    topic: str = _doc("Topic the serving stack logs exchanges to (key = user id).", default="sentinel.exchanges")
    dead_letter_topic: str = _doc(
        "Topic for messages that are not valid exchanges; the reason is in the `sentinel-error` header.",
        default="sentinel.exchanges.dead-letter",
    )
    group_id: str = _doc("Consumer group shared by all daemon replicas.", default="sentinel-monitor")
    client_id: str = _doc("Client id reported to the broker.", default="sentinel-monitor")
    max_poll_records: int = _doc("Maximum records returned by one poll.", default=500)
    max_poll_interval_ms: int = _doc(
        "Kafka max.poll.interval.ms: the group evicts a consumer that does not poll for this long.",
        default=300_000,
    )
    session_timeout_ms: int = _doc("Kafka session.timeout.ms.", default=30_000)
    heartbeat_interval_ms: int = _doc("Kafka heartbeat.interval.ms.", default=3_000)
    request_timeout_ms: int = _doc("Timeout of one broker request.", default=30_000)
    auto_offset_reset: Literal["earliest", "latest"] = _doc(
        "Where a new consumer group starts reading.", default="earliest"
    )
    batch_max_tokens: int = _doc("A micro-batch is scored once its prompts reach this many tokens.", default=16_384)
    batch_max_messages: int = _doc("A micro-batch is scored once it holds this many messages.", default=256)
    batch_max_wait_s: float = _doc(
        "A micro-batch is scored this many seconds after its first message arrived, even if small.", default=2.0
    )
    max_in_flight_messages: int = _doc(
        "Polled messages not yet committed; above this the consumer pauses its partitions.", default=2_000
    )
    processing_timeout_s: float = _doc(
        "Longest time a shutdown waits for the batch being scored and stored; after it the batch is "
        "abandoned uncommitted and read again on restart. Slower batches are logged as warnings.",
        default=240.0,
    )
    max_message_bytes: int = _doc("Larger messages are dead-lettered as too large.", default=1_048_576)
    retry_initial_s: float = _doc("First delay when the broker or the database is unavailable.", default=0.5)
    retry_max_s: float = _doc("Longest delay between retries.", default=30.0)

    def validate(self) -> None:
        _require_positive(
            self,
            "max_poll_records",
            "batch_max_tokens",
            "batch_max_messages",
            "max_in_flight_messages",
            "processing_timeout_s",
            "retry_initial_s",
            "retry_max_s",
            "max_poll_interval_ms",
            "session_timeout_ms",
            "heartbeat_interval_ms",
            "request_timeout_ms",
            "max_message_bytes",
        )
        _require_non_negative(self, "batch_max_wait_s")
        _validate_bootstrap_servers(self.bootstrap_servers)
        if self.max_in_flight_messages < self.batch_max_messages:
            raise ConfigError(
                f"kafka.max_in_flight_messages={self.max_in_flight_messages} is below "
                f"kafka.batch_max_messages={self.batch_max_messages}; a batch could never fill. Raise it."
            )


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = _doc(
        "SQLAlchemy URL of the PostgreSQL database (driver psycopg).",
        default="postgresql+psycopg://sentinel@127.0.0.1:15432/sentinel",
    )
    pool_size: int = _doc("Connections kept open per process.", default=5)
    connect_timeout_s: int = _doc("Timeout to open a connection.", default=10)
    statement_timeout_ms: int = _doc("PostgreSQL statement_timeout for every session.", default=60_000)
    store_raw_text: bool = _doc("Store the conversation and the reply text; scores are stored either way.", default=True)


@dataclass(frozen=True)
class ModelSettings:
    path: str = _doc(
        "A Hugging Face model directory, or empty for the embedded default (SmolLM2-135M-Instruct) "
        "pulled by `sentinel-monitor model pull`.",
        default="",
    )
    adapter: str = _doc(
        "Sentinel adapter to apply: `auto` is the adapter bundled with the package when model.path is empty "
        "(the embedded default) and none otherwise; `none`; or the folder of an adapter made by train-sentinels.",
        default="auto",
    )
    cache_dir: str = _doc("Where pulled models are cached.", default=str(DEFAULT_HOME / "models"))
    device: Literal["auto", "cpu", "cuda"] = _doc("Where the scorer runs; auto picks CUDA when present.", default="auto")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _doc(
        "Weights dtype; auto is bfloat16 on CUDA and float32 on the CPU. Log-softmax is always float32.",
        default="auto",
    )


@dataclass(frozen=True)
class ScoringSettings:
    sentinels: tuple[Sentinel, ...] = _doc("Sentinels to score.", default=DEFAULT_SENTINELS)
    max_prompt_tokens: int = _doc(
        "Longer prompts lose their oldest turns (the system prompt and last user turn are kept).", default=2048
    )
    batch_max_tokens: int = _doc("Padded tokens per forward pass (rows x longest row).", default=8192)
    batch_max_rows: int = _doc(
        "Prompts per forward pass. 16 was fastest on a 2-core CPU (docs/benchmarks.md); a GPU likely wants more.",
        default=16,
    )

    def validate(self) -> None:
        validate_sentinel_set(self.sentinels)
        _require_positive(self, "max_prompt_tokens", "batch_max_tokens", "batch_max_rows")
        if self.batch_max_tokens < self.max_prompt_tokens:
            raise ConfigError(
                f"scoring.batch_max_tokens={self.batch_max_tokens} is below "
                f"scoring.max_prompt_tokens={self.max_prompt_tokens}; a long prompt would never fit a batch."
            )


SEVERITY_NAMES = ("low", "medium", "high", "critical")


@dataclass(frozen=True)
class RuleSettings:
    name: str = _doc("Name of the rule, stored in flags.rule; unique among the rules.", default="")
    window_s: int = _doc("Length of the rule's window in seconds.", default=86_400)
    min_slip_throughs: int = _doc("A user is flagged at this many slip-throughs within the window.", default=3)
    min_risk: float = _doc("The user's risk score over the window must also reach this; 0 turns it off.", default=0.4)
    sentinels: tuple[str, ...] = _doc("Sentinels whose slip-throughs count; empty means all.", default=())
    thresholds: dict[str, float] = _doc(
        "Per-sentinel probability at or above which an answered exchange counts, for example "
        "{HELLNODAVE = 0.05}; a sentinel not listed uses its own scoring threshold.",
        default_factory=dict,
    )
    severity: str = _doc("Severity of a new flag: low, medium, high or critical.", default="high")
    escalate_slip_throughs: int = _doc(
        "A flag escalates to escalate_severity at this many slip-throughs in the window; 0 turns it off.", default=10
    )
    escalate_risk: float = _doc(
        "A flag escalates to escalate_severity when the risk score reaches this; 0 turns it off.", default=0.9
    )
    escalate_severity: str = _doc("Severity of an escalated flag.", default="critical")

    def validate(self, where: str) -> None:
        if not self.name.strip():
            raise ConfigError(f"setting {where}.name is empty; give every rule a name such as \"slips-24h\"")
        for attribute in ("window_s", "min_slip_throughs"):
            if getattr(self, attribute) <= 0:
                raise ConfigError(f"setting {where}.{attribute}={getattr(self, attribute)!r} must be positive")
        if self.escalate_slip_throughs < 0:
            raise ConfigError(f"setting {where}.escalate_slip_throughs={self.escalate_slip_throughs!r} must be zero or more")
        for attribute in ("min_risk", "escalate_risk"):
            value = getattr(self, attribute)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"setting {where}.{attribute}={value!r} is invalid: it must be at least 0 and below 1")
        for attribute in ("severity", "escalate_severity"):
            if getattr(self, attribute) not in SEVERITY_NAMES:
                raise ConfigError(
                    f"setting {where}.{attribute}={getattr(self, attribute)!r} is invalid; "
                    f"choose one of {', '.join(SEVERITY_NAMES)}"
                )
        if SEVERITY_NAMES.index(self.escalate_severity) < SEVERITY_NAMES.index(self.severity):
            raise ConfigError(
                f"setting {where}.escalate_severity={self.escalate_severity!r} is below severity={self.severity!r}; "
                "an escalation must not lower the severity"
            )
        for sentinel, threshold in self.thresholds.items():
            if not 0.0 < threshold <= 1.0:
                raise ConfigError(
                    f"setting {where}.thresholds.{sentinel}={threshold!r} is invalid: it must be above 0 and at most 1"
                )


@dataclass(frozen=True)
class FlagSettings:
    min_slip_throughs: int = _doc(
        "Default rule (used when flags.rules is empty): a user is flagged at this many slip-throughs within the "
        "window.",
        default=3,
    )
    window_s: int = _doc("Default rule: length of the flag window in seconds.", default=86_400)
    interval_s: int = _doc("How often the flag job runs, in seconds.", default=60)
    min_risk: float = _doc(
        "Default rule: a user is flagged only when their risk score over the flag window (docs/risk.md) is at or "
        "above this; 0 turns the check off.",
        default=0.4,
    )
    severity: str = _doc("Default rule: severity of a new flag.", default="high")
    escalate_slip_throughs: int = _doc(
        "Default rule: a flag escalates to critical at this many slip-throughs in the window; 0 turns it off.",
        default=10,
    )
    escalate_risk: float = _doc(
        "Default rule: a flag escalates to critical when the risk score reaches this; 0 turns it off.", default=0.9
    )
    rules: tuple[RuleSettings, ...] = _doc(
        "Named rules ([[flags.rules]] tables, or a JSON list in the environment); when given they replace the "
        "default rule. docs/flags.md describes each field.",
        default=(),
    )
    watermark_overlap_s: int = _doc(
        "The flag job re-reads exchanges ingested this many seconds before its watermark, so that a batch whose "
        "transaction committed late is not missed; keep it above kafka.processing_timeout_s.",
        default=600,
    )

    def validate(self) -> None:
        _require_positive(self, "min_slip_throughs", "window_s", "interval_s")
        _require_non_negative(self, "watermark_overlap_s")
        self.default_rule().validate("flags")
        names = [rule.name for rule in self.rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"setting flags.rules has duplicate rule names {', '.join(duplicates)}; make each unique")
        for index, rule in enumerate(self.rules):
            rule.validate(f"flags.rules[{index}]")

    def default_rule(self) -> RuleSettings:
        """Build the rule of the flat flags.* fields, named as before rules existed, e.g. `slip_throughs>=3,risk>=0.4/24h`."""
        risk = f",risk>={self.min_risk:g}" if self.min_risk > 0 else ""
        return RuleSettings(
            name=f"slip_throughs>={self.min_slip_throughs}{risk}/{_duration_name(self.window_s)}",
            window_s=self.window_s,
            min_slip_throughs=self.min_slip_throughs,
            min_risk=self.min_risk,
            severity=self.severity,
            escalate_slip_throughs=self.escalate_slip_throughs,
            escalate_risk=self.escalate_risk,
        )

    def active_rules(self) -> tuple[RuleSettings, ...]:
        """Return the configured rules, or the default rule when none are configured."""
        return self.rules or (self.default_rule(),)


def _duration_name(seconds: int) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class RiskSettings:
    windows_s: tuple[int, ...] = _doc(
        "Rolling windows of the per-user risk report, in seconds (docs/risk.md).", default=(3600, 86_400, 604_800)
    )
    z: float = _doc(
        "Standard deviations of chance allowed before a user's expected bypassed refusals count as excess.",
        default=2.0,
    )
    scale: float = _doc("Excess expected bypassed refusals that give a risk of 0.63 (1 - 1/e).", default=1.0)
    evidence_limit: int = _doc("How many of a user's highest-probability exchanges a risk report lists.", default=20)
    baseline_max_age_s: int = _doc(
        "Cached population sums (docs/risk.md) are corrected and reused while their window ends within this many "
        "seconds of the queried window's end and were computed this many seconds ago or less; older ones are "
        "recomputed over the whole window. 0 turns the cache off.",
        default=300,
    )
    baseline_refresh_s: int = _doc(
        "How often the baseline job recomputes the cached population sums, in seconds; keep it below "
        "risk.baseline_max_age_s so that queries find them fresh.",
        default=120,
    )

    def validate(self) -> None:
        _require_positive(self, "scale", "evidence_limit", "baseline_refresh_s")
        _require_non_negative(self, "z", "baseline_max_age_s")
        if not self.windows_s or any(window <= 0 for window in self.windows_s):
            raise ConfigError(
                f"setting risk.windows_s={list(self.windows_s)!r} is invalid: list one or more positive numbers of seconds"
            )


@dataclass(frozen=True)
class ConsistencySettings:
    interval_s: int = _doc("How often the consistency report job runs, in seconds.", default=3600)
    window_s: int = _doc("The report groups the exchanges created this many seconds before it runs.", default=86_400)
    similarity: float = _doc(
        "Two requests are near-duplicates at or above this cosine similarity, from 0 (exclusive) to 1 "
        "(docs/consistency.md).",
        default=0.8,
    )
    max_exchanges: int = _doc(
        "The report reads at most this many of the newest exchanges in the window; older ones are left out.",
        default=5_000,
    )
    min_group_size: int = _doc("Groups with fewer requests than this are left out of the report (2 or more).", default=2)

    def validate(self) -> None:
        _require_positive(self, "interval_s", "window_s", "max_exchanges")
        if not 0.0 < self.similarity <= 1.0:
            raise ConfigError(
                f"setting consistency.similarity={self.similarity!r} is invalid: it must be above 0 and at most 1"
            )
        if self.min_group_size < 2:
            raise ConfigError(
                f"setting consistency.min_group_size={self.min_group_size!r} is invalid: a group needs at least 2 "
                "requests"
            )


@dataclass(frozen=True)
class AlertSettings:
    interval_s: int = _doc("How often each replica delivers due alerts, in seconds.", default=5)
    renotify_s: int = _doc(
        "A flag that is still firing and not acknowledged is notified again after this many seconds; 0 turns "
        "re-notification off.",
        default=3600,
    )
    retry_initial_s: float = _doc("Delay before the first retry of a failed delivery, in seconds.", default=30.0)
    retry_max_s: float = _doc(
        "Longest delay between retries; the delay doubles after each failure up to this.", default=900.0
    )
    disable_after_failures: int = _doc(
        "A sink is disabled after this many consecutive failed deliveries, and a sink_disabled alert goes to "
        "the other sinks; `sentinel-monitor alerts enable SINK` turns it back on.",
        default=5,
    )
    batch_size: int = _doc("Most deliveries one replica claims per tick.", default=100)
    claim_lease_s: float = _doc(
        "A claimed delivery is hidden from the other replicas for this many seconds while it is sent; it must "
        "exceed the sink timeouts.",
        default=60.0,
    )
    log: bool = _doc("Write each alert to the log (logger monitor.alerts).", default=True)
    kafka_topic: str = _doc(
        "Kafka topic for alerts (key = dedup key, value = the JSON payload), on kafka.bootstrap_servers; empty "
        "turns the Kafka sink off.",
        default="sentinel.alerts",
    )
    kafka_timeout_s: float = _doc("Longest wait for the broker to acknowledge one alert, in seconds.", default=10.0)
    webhook_url: str = _doc("HTTP(S) URL that receives each alert as a POST; empty turns the webhook off.", default="")
    webhook_secret: str = _doc(
        "HMAC-SHA256 key that signs each webhook request (docs/alerts.md shows how to verify it); required with "
        "webhook_url, at least 16 characters.",
        default="",
    )
    webhook_format: Literal["json", "slack"] = _doc(
        "Webhook body: `json` (the alert) or `slack` (a Slack incoming-webhook message with text and blocks).",
        default="json",
    )
    webhook_timeout_s: float = _doc("Timeout of one webhook request, in seconds.", default=10.0)

    def validate(self) -> None:
        _require_positive(
            self,
            "interval_s",
            "retry_initial_s",
            "retry_max_s",
            "disable_after_failures",
            "batch_size",
            "claim_lease_s",
            "kafka_timeout_s",
            "webhook_timeout_s",
        )
        _require_non_negative(self, "renotify_s")
        if self.retry_max_s < self.retry_initial_s:
            raise ConfigError(
                f"setting alerts.retry_max_s={self.retry_max_s!r} is below alerts.retry_initial_s="
                f"{self.retry_initial_s!r}; raise retry_max_s or lower retry_initial_s"
            )
        longest_send_s = max(self.kafka_timeout_s, self.webhook_timeout_s)
        if self.claim_lease_s <= longest_send_s:
            raise ConfigError(
                f"setting alerts.claim_lease_s={self.claim_lease_s!r} must exceed the longest sink timeout "
                f"({longest_send_s!r} s), or another replica could send the same alert while the first still waits"
            )
        _validate_alert_topic(self.kafka_topic)
        _validate_webhook(self.webhook_url, self.webhook_secret)

    def sink_names(self) -> tuple[str, ...]:
        """Return the names of the configured sinks, in the order log, kafka, webhook."""
        enabled = {"log": self.log, "kafka": bool(self.kafka_topic), "webhook": bool(self.webhook_url)}
        return tuple(name for name, on in enabled.items() if on)


# Kafka accepts topic names of at most 249 characters from this set.
_KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
MIN_WEBHOOK_SECRET_CHARS = 16


def _validate_alert_topic(topic: str) -> None:
    if topic and (not _KAFKA_TOPIC.match(topic) or topic in {".", ".."}):
        raise ConfigError(
            f"setting alerts.kafka_topic={topic!r} is not a valid Kafka topic name; use up to 249 letters, digits, "
            "'.', '_' or '-', or an empty value to turn the Kafka sink off"
        )


def _validate_webhook(url: str, secret: str) -> None:
    if not url:
        return
    # The URL can carry a token (Slack puts one in the path), so no error shows more than its scheme.
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError:
        raise ConfigError(
            "setting alerts.webhook_url is not a valid URL (urllib cannot parse it, for example an unclosed [ in "
            "the host); give an http:// or https:// URL with a host"
        ) from None
    if parsed.scheme not in {"http", "https"}:
        raise ConfigError(
            f"setting alerts.webhook_url is invalid: it must be an http:// or https:// URL, got scheme "
            f"{parsed.scheme or 'none'!r}"
        )
    if not parsed.hostname:
        raise ConfigError(
            f"setting alerts.webhook_url is invalid: the {parsed.scheme}:// URL has no host; "
            f"write it as {parsed.scheme}://HOST/PATH"
        )
    if not secret:
        raise ConfigError(
            "setting alerts.webhook_secret is empty but alerts.webhook_url is set; every webhook request is signed, "
            "so set the shared key (SENTINEL_ALERTS__WEBHOOK_SECRET)"
        )
    if len(secret) < MIN_WEBHOOK_SECRET_CHARS:
        raise ConfigError(
            f"setting alerts.webhook_secret is too short ({len(secret)} characters); use at least "
            f"{MIN_WEBHOOK_SECRET_CHARS}, for example the output of `python -c 'import secrets; "
            "print(secrets.token_hex(32))'`"
        )


API_ROLES = ("viewer", "reviewer")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class ApiToken:
    name: str = _doc("Who uses the token; recorded as the actor of the flag reviews made with it.", default="")
    role: Literal["viewer", "reviewer"] = _doc(
        "viewer reads scores, ids and flags; reviewer also reads raw text and reviews flags.", default="viewer"
    )
    sha256: str = _doc("Hex SHA-256 digest of the token; the token itself is never stored.", default="")


@dataclass(frozen=True)
class ApiSettings:
    enabled: bool = _doc("Serve the HTTP API inside `sentinel-monitor run`.", default=True)
    host: str = _doc("Address the HTTP API listens on.", default="127.0.0.1")
    port: int = _doc("TCP port of the HTTP API; 0 picks a free port and logs it.", default=8686)
    tokens: tuple[ApiToken, ...] = _doc(
        "Bearer tokens ([[api.tokens]] tables with name, role and sha256, or a JSON list in the environment); "
        "`sentinel-monitor api token` makes one. Without tokens every data endpoint answers 401.",
        default=(),
    )

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"setting api.port={self.port!r} is invalid: use a port from 0 to 65535")
        if not self.host.strip():
            raise ConfigError("setting api.host is empty; give an address such as 127.0.0.1")
        for index, token in enumerate(self.tokens):
            _validate_api_token(token, f"api.tokens[{index}]")
        names = [token.name for token in self.tokens]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"setting api.tokens has duplicate names {', '.join(duplicates)}; give each token its own name")
        digests = [token.sha256.lower() for token in self.tokens]
        if len(set(digests)) != len(digests):
            raise ConfigError("setting api.tokens lists the same sha256 twice; create a new token for each entry")


def _validate_api_token(token: ApiToken, where: str) -> None:
    if not token.name.strip():
        raise ConfigError(f"setting {where}.name is empty; name the person or service that uses the token")
    if token.role not in API_ROLES:
        raise ConfigError(f"setting {where}.role={token.role!r} is invalid; choose one of {', '.join(API_ROLES)}")
    if not _SHA256_HEX.fullmatch(token.sha256):
        raise ConfigError(
            f"setting {where}.sha256={token.sha256!r} is not a SHA-256 hex digest (64 hex characters); "
            "`sentinel-monitor api token` prints one"
        )


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    flags: FlagSettings = field(default_factory=FlagSettings)
    risk: RiskSettings = field(default_factory=RiskSettings)
    consistency: ConsistencySettings = field(default_factory=ConsistencySettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def validate(self) -> "Settings":
        _require_positive(self.database, "pool_size", "connect_timeout_s", "statement_timeout_ms")
        self.kafka.validate()
        self.scoring.validate()
        self.flags.validate()
        _validate_rule_sentinels(self.flags, self.scoring)
        self.risk.validate()
        self.consistency.validate()
        self.alerts.validate()
        self.api.validate()
        return self


def _validate_rule_sentinels(flags: FlagSettings, scoring: ScoringSettings) -> None:
    # A misspelt sentinel would make a rule that never counts anything, or a threshold that is ignored.
    known = [sentinel.name for sentinel in scoring.sentinels]
    for index, rule in enumerate(flags.rules):
        unknown = sorted((set(rule.sentinels) | set(rule.thresholds)) - set(known))
        if unknown:
            raise ConfigError(
                f"setting flags.rules[{index}] (rule {rule.name!r}) names unknown sentinel(s) {', '.join(unknown)}; "
                f"the configured sentinels are {', '.join(known)} (names are case-sensitive)"
            )


def _require_positive(section: object, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if value <= 0:
            raise ConfigError(f"setting {_section_name(section)}.{name}={value!r} must be positive")


def _require_non_negative(section: object, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if value < 0:
            raise ConfigError(f"setting {_section_name(section)}.{name}={value!r} must be zero or more")


def _section_name(section: object) -> str:
    names = {
        KafkaSettings: "kafka",
        DatabaseSettings: "database",
        ModelSettings: "model",
        ScoringSettings: "scoring",
        FlagSettings: "flags",
        ConsistencySettings: "consistency",
        ApiSettings: "api",
        AlertSettings: "alerts",
    }
    return names.get(type(section), type(section).__name__)


def _validate_bootstrap_servers(servers: str) -> None:
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(
                f"setting kafka.bootstrap_servers={servers!r} is invalid: {server.strip()!r} is not host:port "
                "with a port from 1 to 65535"
            )


def load_settings(config_path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from defaults, an optional TOML file and the environment."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}

    path = config_path or env.get(f"{ENV_PREFIX}CONFIG")
    if path:
        raw = _read_toml(Path(path))

    for section, values in _read_environment(env).items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values

    settings: Settings = _build(Settings, raw, "")
    return settings.validate()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {path}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from exc


def _read_environment(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == f"{ENV_PREFIX}CONFIG":
            continue
        name = key[len(ENV_PREFIX):].lower()
        if "__" in name:
            section, _, attribute = name.partition("__")
            out.setdefault(section, {})[attribute] = value
        elif name in {f.name for f in dataclasses.fields(Settings)}:
            out[name] = value
    return out


def _build(cls: type[Any], raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"setting {where.rstrip('.') or 'root'} must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(where + k for k in unknown)}; valid names: {', '.join(sorted(known))}"
        )
    kwargs = {name: _convert(hints[name], value, f"{where}{name}") for name, value in raw.items()}
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where + ".")
    if hint is bool:
        return _convert_bool(value, where)
    if hint in (int, float, str):
        return _convert_scalar(hint, value, where)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"setting {where}={value!r} is invalid; choose one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple and typing.get_args(hint)[0] is Sentinel:
        return _convert_sentinels(value, where)
    if origin is tuple and typing.get_args(hint)[0] is int:
        return _convert_int_list(value, where)
    if origin is tuple and typing.get_args(hint)[0] is str:
        return tuple(_convert_scalar(str, item, where) for item in _list_value(value, where))
    if origin is tuple and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        item_type = typing.get_args(hint)[0]
        items = _list_value(value, where)
        return tuple(_build(item_type, item, f"{where}[{index}].") for index, item in enumerate(items))
    if origin is dict and typing.get_args(hint) == (str, float):
        return _convert_float_table(value, where)
    raise ConfigError(f"setting {where} has an unsupported type {hint}")


def _convert_int_list(value: Any, where: str) -> tuple[int, ...]:
    # TOML gives a list; an environment variable gives "3600,86400" or a JSON list.
    if isinstance(value, str):
        text = value.strip()
        try:
            items: Any = json.loads(text) if text.startswith("[") else [part for part in text.split(",") if part.strip()]
        except json.JSONDecodeError as exc:
            raise ConfigError(f"setting {where}={value!r} is not a valid JSON list: {exc.msg}") from exc
    else:
        items = value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"setting {where}={value!r} is invalid: expected a list of integers such as [3600, 86400]")
    return tuple(_convert_scalar(int, item, where) for item in items)


def _list_value(value: Any, where: str) -> list[Any]:
    # TOML gives a list; an environment variable gives a JSON list.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"setting {where}={value!r} is not a valid JSON list: {exc.msg}") from exc
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"setting {where}={value!r} is invalid: expected a list")
    return list(value)


def _convert_float_table(value: Any, where: str) -> dict[str, float]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"setting {where}={value!r} is not a valid JSON object: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"setting {where}={value!r} is invalid: expected a table such as {{HELLNODAVE = 0.05}}")
    return {str(key): _convert_scalar(float, item, f"{where}.{key}") for key, item in value.items()}


def _convert_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"setting {where}={value!r} is not a boolean; use true or false")


def _convert_scalar(hint: type[Any], value: Any, where: str) -> Any:
    if isinstance(value, bool) and hint is not str:
        raise ConfigError(f"setting {where}={value!r} must be a {hint.__name__}, not a boolean")
    try:
        converted = hint(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {where}={value!r} is not a valid {hint.__name__}") from exc
    if hint is float and not math.isfinite(converted):
        raise ConfigError(f"setting {where}={value!r} must be a finite number")
    return converted


def _convert_sentinels(value: Any, where: str) -> tuple[Sentinel, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"setting {where} must be a JSON list of sentinel objects: {exc}") from exc
    if not isinstance(value, list):
        raise ConfigError(f"setting {where} must be a list of tables with name, text, threshold and severity")
    sentinels = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ConfigError(f"setting {where}[{index}] must be a table, got {item!r}")
        sentinels.append(_build(Sentinel, item, f"{where}[{index}]."))
    return tuple(sentinels)
