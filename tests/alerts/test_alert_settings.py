"""Alert settings: defaults, the sinks they turn on, and invalid values rejected with the setting's name."""

from __future__ import annotations

import pytest

from monitor.errors import ConfigError
from monitor.settings import AlertSettings, load_settings

SECRET = "0123456789abcdef0123"


def test_defaults_turn_on_log_and_kafka() -> None:
    settings = load_settings(environ={})

    assert settings.alerts.sink_names() == ("log", "kafka")
    assert settings.alerts.interval_s == 5
    assert settings.alerts.renotify_s == 3600
    assert settings.alerts.disable_after_failures == 5


def test_webhook_from_environment() -> None:
    settings = load_settings(
        environ={
            "SENTINEL_ALERTS__WEBHOOK_URL": "https://hooks.example.com/services/T0/B0/x",
            "SENTINEL_ALERTS__WEBHOOK_SECRET": SECRET,
            "SENTINEL_ALERTS__WEBHOOK_FORMAT": "slack",
            "SENTINEL_ALERTS__KAFKA_TOPIC": "",
            "SENTINEL_ALERTS__LOG": "false",
        }
    )

    assert settings.alerts.sink_names() == ("webhook",)
    assert settings.alerts.webhook_format == "slack"


def test_no_sinks_when_all_off() -> None:
    assert AlertSettings(log=False, kafka_topic="").sink_names() == ()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SENTINEL_ALERTS__WEBHOOK_URL": "https://example.com/hook"}, "alerts.webhook_secret is empty"),
        (
            {"SENTINEL_ALERTS__WEBHOOK_URL": "ftp://example.com/hook", "SENTINEL_ALERTS__WEBHOOK_SECRET": SECRET},
            "must be an http:// or https:// URL",
        ),
        (
            {"SENTINEL_ALERTS__WEBHOOK_URL": "https:///no-host", "SENTINEL_ALERTS__WEBHOOK_SECRET": SECRET},
            "the https:// URL has no host",
        ),
        (
            {"SENTINEL_ALERTS__WEBHOOK_URL": "https://example.com/hook", "SENTINEL_ALERTS__WEBHOOK_SECRET": "short"},
            "webhook_secret is too short (5 characters)",
        ),
        ({"SENTINEL_ALERTS__RETRY_INITIAL_S": "0"}, "alerts.retry_initial_s=0.0 must be positive"),
        ({"SENTINEL_ALERTS__INTERVAL_S": "-5"}, "alerts.interval_s=-5 must be positive"),
        ({"SENTINEL_ALERTS__DISABLE_AFTER_FAILURES": "0"}, "alerts.disable_after_failures=0 must be positive"),
        ({"SENTINEL_ALERTS__RENOTIFY_S": "-1"}, "alerts.renotify_s=-1 must be zero or more"),
        ({"SENTINEL_ALERTS__RETRY_MAX_S": "5"}, "alerts.retry_max_s=5.0 is below alerts.retry_initial_s=30.0"),
        ({"SENTINEL_ALERTS__CLAIM_LEASE_S": "10"}, "alerts.claim_lease_s=10.0 must exceed the longest sink timeout"),
        ({"SENTINEL_ALERTS__KAFKA_TOPIC": "alerts topic"}, "alerts.kafka_topic='alerts topic' is not a valid Kafka"),
        ({"SENTINEL_ALERTS__WEBHOOK_FORMAT": "teams"}, "alerts.webhook_format='teams' is invalid; choose one of json"),
        ({"SENTINEL_ALERTS__LOG": "maybe"}, "alerts.log='maybe' is not a boolean"),
    ],
)
def test_invalid_settings_rejected(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=environ)

    assert message in str(raised.value)


def test_error_hides_webhook_url() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"SENTINEL_ALERTS__WEBHOOK_URL": "ftp://example.com/T0/secret-token"})

    assert "secret-token" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http:///T0/secret-token", "the http:// URL has no host"),
        ("https://:8080/secret-token", "the https:// URL has no host"),
        ("ftp://example.com/secret-token", "got scheme 'ftp'"),
        ("http://[::1/secret-token", "is not a valid URL"),
    ],
)
def test_webhook_url_error_names_problem(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"SENTINEL_ALERTS__WEBHOOK_URL": url, "SENTINEL_ALERTS__WEBHOOK_SECRET": "s" * 32})

    assert message in str(raised.value)
    assert "secret-token" not in str(raised.value)


def test_renotify_zero_allowed() -> None:
    settings = load_settings(environ={"SENTINEL_ALERTS__RENOTIFY_S": "0"})

    assert settings.alerts.renotify_s == 0
