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
import tomllib
import typing
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


@dataclass(frozen=True)
class FlagSettings:
    min_slip_throughs: int = _doc("A user is flagged at this many slip-throughs within the window.", default=3)
    window_s: int = _doc("Length of the flag window in seconds.", default=86_400)
    interval_s: int = _doc("How often the flag job runs, in seconds.", default=60)
    min_risk: float = _doc(
        "A user is flagged only when their risk score over the flag window (docs/risk.md) is at or above this; "
        "0 turns the check off.",
        default=0.4,
    )

    def validate(self) -> None:
        _require_positive(self, "min_slip_throughs", "window_s", "interval_s")
        if not 0.0 <= self.min_risk < 1.0:
            raise ConfigError(f"setting flags.min_risk={self.min_risk!r} is invalid: it must be at least 0 and below 1")


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

    def validate(self) -> None:
        _require_positive(self, "scale", "evidence_limit")
        _require_non_negative(self, "z")
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
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    flags: FlagSettings = field(default_factory=FlagSettings)
    risk: RiskSettings = field(default_factory=RiskSettings)
    consistency: ConsistencySettings = field(default_factory=ConsistencySettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def validate(self) -> "Settings":
        _require_positive(self.database, "pool_size", "connect_timeout_s", "statement_timeout_ms")
        self.kafka.validate()
        self.scoring.validate()
        self.flags.validate()
        self.risk.validate()
        self.consistency.validate()
        return self


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
