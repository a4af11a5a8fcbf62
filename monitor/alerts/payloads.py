"""Alert payloads: the alert as JSON, a Slack message, and the webhook signature.

A webhook request is signed with HMAC-SHA256 over `"<timestamp>." + body`,
where `<timestamp>` is the Unix time in the `X-Sentinel-Timestamp` header, so a
receiver can reject both altered bodies and old requests replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from storage.alerts import StoredAlert

SCHEMA = "sentinel.alert/v1"
SIGNATURE_PREFIX = "sha256="

_SEVERITY_EMOJI = {"low": ":information_source:", "medium": ":warning:", "high": ":rotating_light:", "critical": ":fire:"}
_KIND_TITLES = {
    "opened": "Flag opened",
    "reopened": "Flag reopened",
    "escalated": "Flag escalated",
    "renotify": "Flag still firing",
    "recovered": "Flag recovered",
    "reviewed": "Flag reviewed",
    "sink_disabled": "Alert sink disabled",
    "test": "Test alert",
}


def alert_message(alert: StoredAlert) -> dict[str, Any]:
    """Build the JSON message of an alert, the body of the Kafka record and of a `json` webhook."""
    return {
        "schema": SCHEMA,
        "id": alert.id,
        "dedup_key": alert.dedup_key,
        "kind": alert.kind,
        "severity": alert.severity,
        "flag_id": alert.flag_id,
        "user_id": alert.user_id,
        "rule": alert.rule,
        "created_at": alert.created_at.isoformat(),
        "summary": alert.payload.get("summary", ""),
        "payload": alert.payload,
    }


def slack_message(alert: StoredAlert) -> dict[str, Any]:
    """Build a Slack incoming-webhook message: `text` for notifications, `blocks` for the channel."""
    title = f"{_SEVERITY_EMOJI.get(alert.severity, '')} {_KIND_TITLES.get(alert.kind, alert.kind)}".strip()
    summary = _slack_escape(str(alert.payload.get("summary", "")))
    fields = [("Severity", alert.severity), ("Kind", alert.kind)]
    for name, value in (("User", alert.user_id), ("Rule", alert.rule), ("Flag", alert.flag_id)):
        if value is not None:
            fields.append((name, str(value)))
    context = f"alert {alert.id} · {alert.created_at.isoformat()} · key {_slack_escape(alert.dedup_key)}"
    return {
        "text": summary or title,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": summary[:3000] or "-"}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{name}*\n{_slack_escape(value)[:1900]}"} for name, value in fields
                ],
            },
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


def encode_message(message: dict[str, Any]) -> bytes:
    """Encode a message as compact UTF-8 JSON: these exact bytes are sent and signed."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Return the `X-Sentinel-Signature` value: `sha256=` and the hex HMAC-SHA256 of `"<timestamp>." + body`."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn reads &, < and > as markup, so user ids and rules are escaped.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
