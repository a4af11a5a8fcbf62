"""Alert payloads: the JSON message, the Slack message, and the webhook signature."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from http.client import HTTPMessage
from typing import Any

import pytest

from monitor.alerts.payloads import SCHEMA, alert_message, encode_message, sign, slack_message
from monitor.alerts.sinks import WebhookSink
from storage.alerts import ALERT_KINDS, StoredAlert
from tests.alerts.receiver import verify_signature
from tests.conftest import REPO_ROOT

SECRET = "test-secret-0123456789abcdef"
CREATED = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)


def _alert(**overrides: object) -> StoredAlert:
    fields: dict[str, object] = {
        "id": 42,
        "dedup_key": "flag:7:escalated:2026-12-05T12:00:00+00:00",
        "kind": "escalated",
        "severity": "critical",
        "flag_id": 7,
        "user_id": "user-<b>&co",
        "rule": "slips-24h",
        "created_at": CREATED,
        "payload": {"summary": "user-<b>&co escalated to critical under slips-24h", "risk": 0.93},
    }
    fields.update(overrides)
    return StoredAlert(**fields)  # type: ignore[arg-type]


def test_alert_message_fields() -> None:
    message = alert_message(_alert())

    assert message["schema"] == SCHEMA
    assert message["id"] == 42
    assert message["dedup_key"] == "flag:7:escalated:2026-12-05T12:00:00+00:00"
    assert message["kind"] == "escalated"
    assert message["severity"] == "critical"
    assert message["flag_id"] == 7
    assert message["user_id"] == "user-<b>&co"
    assert message["created_at"] == "2026-12-05T12:00:00+00:00"
    assert message["summary"] == "user-<b>&co escalated to critical under slips-24h"
    assert message["payload"]["risk"] == 0.93


def test_slack_message_shape() -> None:
    message = slack_message(_alert())

    assert set(message) == {"text", "blocks"}
    assert message["text"] == "user-&lt;b&gt;&amp;co escalated to critical under slips-24h"
    assert [block["type"] for block in message["blocks"]] == ["header", "section", "section", "context"]
    header = message["blocks"][0]["text"]
    assert header["type"] == "plain_text"
    assert "Flag escalated" in header["text"]
    fields = [field["text"] for field in message["blocks"][2]["fields"]]
    assert "*Severity*\ncritical" in fields
    assert "*User*\nuser-&lt;b&gt;&amp;co" in fields
    assert "*Flag*\n7" in fields


def test_slack_message_without_flag() -> None:
    message = slack_message(_alert(kind="sink_disabled", flag_id=None, user_id=None, rule=None, severity="high"))

    fields = [field["text"] for field in message["blocks"][2]["fields"]]
    assert fields == ["*Severity*\nhigh", "*Kind*\nsink_disabled"]
    assert "Alert sink disabled" in message["blocks"][0]["text"]["text"]


@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_slack_header_has_title_for_every_kind(kind: str) -> None:
    header = slack_message(_alert(kind=kind, severity="high"))["blocks"][0]["text"]["text"]

    emoji, title = header.split(" ", 1)
    assert emoji == ":rotating_light:"
    assert title != kind
    assert title[0].isupper()


def test_encoding_is_stable() -> None:
    message = alert_message(_alert())

    assert encode_message(message) == encode_message(dict(reversed(list(message.items()))))
    assert json.loads(encode_message(message)) == message


def test_signature_verifies_and_detects_changes() -> None:
    body = encode_message(alert_message(_alert()))
    headers = {"x-sentinel-timestamp": "1764936000", "x-sentinel-signature": sign(SECRET, 1764936000, body)}

    assert headers["x-sentinel-signature"].startswith("sha256=")
    assert verify_signature(SECRET, headers, body, now=1764936000)
    assert not verify_signature(SECRET, headers, body + b" ", now=1764936000)
    assert not verify_signature("another-secret-0123456789", headers, body, now=1764936000)
    assert not verify_signature(SECRET, {**headers, "x-sentinel-timestamp": "1764936001"}, body, now=1764936000)


def test_signature_rejects_old_timestamp() -> None:
    body = b"{}"
    headers = {"x-sentinel-timestamp": "1764936000", "x-sentinel-signature": sign(SECRET, 1764936000, body)}

    assert not verify_signature(SECRET, headers, body, now=1764936000 + 301)


def test_webhook_request_headers() -> None:
    sink = WebhookSink(
        "https://hooks.example.com/x", SECRET, message_format="json", timeout_s=5.0, clock=lambda: 1764936000.5
    )

    request = sink.build_request(_alert(dedup_key="flag:7:opened:user é"))

    headers = {name.lower(): value for name, value in request.header_items()}
    assert request.get_method() == "POST"
    assert headers["x-sentinel-alert-key"] == "flag:7:opened:user%20%C3%A9"
    assert headers["x-sentinel-timestamp"] == "1764936000"
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert isinstance(request.data, bytes)
    assert verify_signature(SECRET, headers, request.data, now=1764936000)


def test_docs_recipe_verifies_request() -> None:
    text = (REPO_ROOT / "docs" / "alerts.md").read_text()
    recipe = text.split("## Verifying a webhook request", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(recipe, namespace)
    sink = WebhookSink("https://hooks.example.com/x", SECRET, message_format="slack", timeout_s=5.0)
    request = sink.build_request(_alert())
    headers = HTTPMessage()
    for name, value in request.header_items():
        headers[name] = value
    body = request.data
    assert isinstance(body, bytes)

    assert namespace["verify"](SECRET, headers, body)
    assert not namespace["verify"](SECRET, headers, body.replace(b"critical", b"low"))
    assert not namespace["verify"]("another-secret-0123456789", headers, body)
