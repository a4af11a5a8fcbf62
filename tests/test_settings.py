"""Settings from defaults, a TOML file and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.errors import ConfigError
from monitor.settings import DEFAULT_SENTINELS, load_settings


def test_defaults_are_valid() -> None:
    settings = load_settings(environ={})
    assert settings.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert settings.scoring.sentinels == DEFAULT_SENTINELS


def test_toml_file_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "sentinel.toml"
    config.write_text(
        """
log_level = "DEBUG"
[kafka]
topic = "from-file"
batch_max_wait_s = 0.5
[[scoring.sentinels]]
name = "SORRYDAVE"
text = "<SORRYDAVE>"
threshold = 0.5
severity = "low"
""",
        encoding="utf-8",
    )
    settings = load_settings(config, environ={"SENTINEL_KAFKA__TOPIC": "from-env", "SENTINEL_FLAGS__WINDOW_S": "3600"})
    assert settings.log_level == "DEBUG"
    assert settings.kafka.topic == "from-env"
    assert settings.kafka.batch_max_wait_s == 0.5
    assert settings.flags.window_s == 3600
    assert [s.name for s in settings.scoring.sentinels] == ["SORRYDAVE"]


def test_sentinels_from_environment_json() -> None:
    settings = load_settings(
        environ={"SENTINEL_SCORING__SENTINELS": '[{"name": "a", "text": "No", "threshold": 0.1}]'}
    )
    assert settings.scoring.sentinels[0].text == "No"


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[database]\nstore_raw_text = false\n', encoding="utf-8")
    assert load_settings(environ={"SENTINEL_CONFIG": str(config)}).database.store_raw_text is False


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SENTINEL_KAFKA__TOPICS": "x"}, "unknown setting"),
        ({"SENTINEL_KAFKA__MAX_POLL_RECORDS": "many"}, "not a valid int"),
        ({"SENTINEL_KAFKA__MAX_POLL_RECORDS": "0"}, "must be positive"),
        ({"SENTINEL_MODEL__DEVICE": "tpu"}, "choose one of"),
        ({"SENTINEL_DATABASE__STORE_RAW_TEXT": "maybe"}, "not a boolean"),
        ({"SENTINEL_KAFKA__PROCESSING_TIMEOUT_S": "0"}, "must be positive"),
        ({"SENTINEL_KAFKA__BATCH_MAX_WAIT_S": "nan"}, "finite number"),
        ({"SENTINEL_KAFKA__BATCH_MAX_WAIT_S": "inf"}, "finite number"),
        ({"SENTINEL_KAFKA__BATCH_MAX_WAIT_S": "-1"}, "zero or more"),
        ({"SENTINEL_KAFKA__BOOTSTRAP_SERVERS": "nohostport"}, "not host:port"),
        ({"SENTINEL_KAFKA__BOOTSTRAP_SERVERS": "a:9092,b:99999"}, "'b:99999' is not host:port"),
        ({"SENTINEL_FLAGS__WINDOW_S": "0"}, "flags.window_s=0 must be positive"),
        ({"SENTINEL_DATABASE__POOL_SIZE": "0"}, "database.pool_size=0 must be positive"),
        ({"SENTINEL_KAFKA__MAX_IN_FLIGHT_MESSAGES": "10"}, "could never fill"),
        ({"SENTINEL_SCORING__SENTINELS": "[]"}, "no sentinels"),
        ({"SENTINEL_SCORING__SENTINELS": '[{"name": "a", "text": "x", "threshold": 1.5}]'}, "threshold"),
        ({"SENTINEL_SCORING__SENTINELS": '[{"name": "a", "text": "x", "threshold": 0.1}, {"name": "a", "text": "y", "threshold": 0.1}]'}, "duplicate"),
        ({"SENTINEL_SCORING__SENTINELS": "not json"}, "JSON list"),
    ],
)
def test_invalid_settings_explain_themselves(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_config_path_that_is_a_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_settings(tmp_path, environ={})


def test_section_that_is_not_a_table_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("kafka = 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="setting kafka must be a table"):
        load_settings(config, environ={})


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[kafka\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(config, environ={})


def test_configuration_reference_is_current() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    generated = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "settings_reference.py")],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT, timeout=60,
    ).stdout  # fmt: skip

    documented = (REPO_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert generated == documented, "run: .venv/bin/python scripts/settings_reference.py > docs/configuration.md"


def test_risk_windows_from_environment() -> None:
    settings = load_settings(environ={"SENTINEL_RISK__WINDOWS_S": "600,3600"})
    assert settings.risk.windows_s == (600, 3600)

    settings = load_settings(environ={"SENTINEL_RISK__WINDOWS_S": "[60, 120]"})
    assert settings.risk.windows_s == (60, 120)


@pytest.mark.parametrize(
    ("value", "message"),
    [("", "list one or more positive"), ("0,60", "list one or more positive"), ("[1,", "not a valid JSON list"),
     ("ten", "is not a valid int")],
)  # fmt: skip
def test_risk_windows_reject_invalid(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={"SENTINEL_RISK__WINDOWS_S": value})
