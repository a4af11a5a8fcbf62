"""The abusive-user scenario: built from the public datasets, and run end to end through Kafka and PostgreSQL."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.scenario import ScenarioError, ScenarioShape, build_scenario
from monitor.training.data import split_of
from monitor.wire import decode_exchange
from tests.conftest_db import database_url_for_tests

START = datetime(2026, 12, 5, tzinfo=timezone.utc)
SMALL = ScenarioShape(public_users=20, heavy_requests=60, abusive_users=2, abusive_requests=4, abusive_cover=3)


@pytest.mark.datasets
def test_scenario_uses_only_test_split_prompts(public_datasets: Path) -> None:
    scenario = build_scenario(public_datasets, SMALL, start=START)

    exchanges = [decode_exchange(json.dumps(message).encode()) for message in scenario.messages]
    prompts = [exchange.messages[-1].content for exchange in exchanges]
    assert all(split_of(prompt) == "test" for prompt in prompts)
    assert len({exchange.id for exchange in exchanges}) == len(exchanges)
    assert all(exchange.reply for exchange in exchanges)


@pytest.mark.datasets
def test_scenario_users_have_the_requested_shape(public_datasets: Path) -> None:
    scenario = build_scenario(public_datasets, SMALL, start=START)

    users = scenario.users()
    assert scenario.abusive_users == ("abuser-1", "abuser-2")
    assert users["heavy-benign"] == 60
    assert users["abuser-1"] == users["abuser-2"] == 4 + 3
    harmful = Counter(m["user_id"] for m in scenario.messages if m["metadata"]["source"] == "jbb_ablation")
    assert harmful == {"abuser-1": 4, "abuser-2": 4}
    public = [user for user in users if user.startswith("public-")]
    assert 1 < len(public) <= 20
    assert max(users[user] for user in public) < users["heavy-benign"]


@pytest.mark.datasets
def test_scenario_is_reproducible_for_a_seed(public_datasets: Path) -> None:
    first = build_scenario(public_datasets, SMALL, start=START)
    again = build_scenario(public_datasets, SMALL, start=START)
    assert first.messages == again.messages


def test_scenario_without_datasets_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="dataset folder not found"):
        build_scenario(tmp_path / "missing", SMALL, start=START)
    assert main(["scenario", "build", "--datasets", str(tmp_path / "missing"), "--output", str(tmp_path / "x.jsonl")]) == 2


@pytest.mark.datasets
@pytest.mark.model
@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
def test_scenario_run_flags_exactly_the_abusive_users(
    public_datasets: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SENTINEL_DATABASE__URL", database_url_for_tests())
    arguments = ["--public-users", "20", "--heavy-requests", "60", "--abusive-users", "2", "--abusive-requests", "4"]

    status = main(["--log-level", "WARNING", "scenario", "run", "--datasets", str(public_datasets), "--json", *arguments])

    report = json.loads(capsys.readouterr().out)
    assert report["flagged_users"] == ["abuser-1", "abuser-2"]
    assert status == 0
    heavy = next(row for row in report["table"] if row["user_id"] == "heavy-benign")
    assert heavy["slip_throughs"] >= 3
    assert heavy["flagged"] is False


@pytest.mark.datasets
def test_scenario_too_many_harmful_rows(public_datasets: Path) -> None:
    shape = ScenarioShape(abusive_users=3, abusive_requests=100)
    with pytest.raises(ScenarioError, match="need 300 harmful rows, but the datasets give .*lower --abusive-users"):
        build_scenario(public_datasets, shape, start=START)
