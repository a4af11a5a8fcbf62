"""Flag rules in the configuration file and the environment, and their validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.errors import ConfigError
from monitor.settings import FlagSettings, RuleSettings, load_settings

RULES_TOML = """
[[flags.rules]]
name = "hellnodave-1h"
window_s = 3600
min_slip_throughs = 2
min_risk = 0.0
sentinels = ["HELLNODAVE"]
thresholds = { HELLNODAVE = 0.05 }
severity = "critical"
escalate_slip_throughs = 0

[[flags.rules]]
name = "slips-7d"
window_s = 604800
min_slip_throughs = 10
"""


def test_rules_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "sentinel.toml"
    config.write_text(RULES_TOML)

    rules = load_settings(config, environ={}).flags.active_rules()

    assert [rule.name for rule in rules] == ["hellnodave-1h", "slips-7d"]
    assert rules[0].sentinels == ("HELLNODAVE",)
    assert rules[0].thresholds == {"HELLNODAVE": 0.05}
    assert (rules[0].severity, rules[0].escalate_slip_throughs) == ("critical", 0)
    assert (rules[1].severity, rules[1].min_risk, rules[1].escalate_severity) == ("high", 0.4, "critical")


def test_rules_from_environment_json() -> None:
    environ = {"SENTINEL_FLAGS__RULES": '[{"name": "burst", "window_s": 600, "thresholds": {"SORRYDAVE": 0.9}}]'}

    rules = load_settings(None, environ=environ).flags.active_rules()

    assert [(rule.name, rule.window_s, rule.thresholds) for rule in rules] == [("burst", 600, {"SORRYDAVE": 0.9})]


def test_default_rule_keeps_its_historical_name() -> None:
    rule = FlagSettings().active_rules()[0]
    assert rule.name == "slip_throughs>=3,risk>=0.4/24h"
    assert FlagSettings(min_risk=0.0, window_s=3600).default_rule().name == "slip_throughs>=3/1h"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ('[{"window_s": 60}]', "flags.rules[0].name is empty"),
        ('[{"name": "a"}, {"name": "a"}]', "duplicate rule names a"),
        ('[{"name": "a", "severity": "urgent"}]', "flags.rules[0].severity='urgent' is invalid; choose one of low"),
        ('[{"name": "a", "severity": "critical", "escalate_severity": "high"}]', "must not lower the severity"),
        ('[{"name": "a", "thresholds": {"HELLNODAVE": 1.5}}]', "thresholds.HELLNODAVE=1.5 is invalid"),
        ('[{"name": "a", "window_s": 0}]', "flags.rules[0].window_s=0 must be positive"),
        ('[{"name": "a", "colour": "red"}]', "unknown setting(s) flags.rules[0].colour"),
        ('{"name": "a"}', "expected a list"),
        ("[not json", "is not a valid JSON list"),
    ],
)
def test_bad_rules_are_rejected_with_the_setting_named(environ: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"SENTINEL_FLAGS__RULES": environ})
    assert message in str(caught.value)


def test_rule_validation_rejects_a_blank_name_directly() -> None:
    with pytest.raises(ConfigError, match="name is empty"):
        RuleSettings(name="  ").validate("flags.rules[3]")


@pytest.mark.parametrize(
    "rule",
    [
        '[{"name": "typo", "sentinels": ["HELLNODAV"]}]',
        '[{"name": "typo", "thresholds": {"HELLNODAVE_": 0.9}}]',
        '[{"name": "typo", "sentinels": ["hellnodave"]}]',
    ],
)
def test_rule_with_unknown_sentinel_is_rejected(rule: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"SENTINEL_FLAGS__RULES": rule})
    assert "names unknown sentinel(s)" in str(caught.value)
    assert "the configured sentinels are SORRYDAVE, HELLNODAVE" in str(caught.value)
