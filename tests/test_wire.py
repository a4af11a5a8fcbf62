"""Decoding and encoding of the accepted message formats."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

import pytest

from monitor.errors import InvalidExchangeError
from monitor.exchange import ChatMessage, Exchange, Override
from monitor.wire import decode_exchange, encode_exchange


def native(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schema": "exchange/v1",
        "id": "ex-1",
        "user_id": "user-1",
        "model": "model-a",
        "created_at": "2026-12-01T10:00:00Z",
        "request": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        "response": {"content": "Hello!"},
    }
    document.update(overrides)
    return document


def openai(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "request": {"model": "gpt-x", "user": "user-9", "messages": [{"role": "user", "content": "Hi"}]},
        "response": {
            "id": "chatcmpl-1",
            "created": 1764583200,
            "model": "gpt-x-2026",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello", "refusal": None}}],
        },
    }
    document.update(overrides)
    return document


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode("utf-8")


def reason_of(value: bytes | None) -> str:
    with pytest.raises(InvalidExchangeError) as caught:
        decode_exchange(value)
    return caught.value.reason


def test_native_exchange_decodes() -> None:
    exchange = decode_exchange(encode(native(override={"trusted": True, "reason": "red team"}, metadata={"a": 1})))
    assert exchange.id == "ex-1"
    assert exchange.user_id == "user-1"
    assert exchange.created_at == datetime(2026, 12, 1, 10, tzinfo=timezone.utc)
    assert exchange.messages == (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"))
    assert exchange.reply == "Hello!"
    assert exchange.override == Override(trusted=True, reason="red team")
    assert exchange.is_override
    assert exchange.metadata == {"a": 1}


def test_native_without_schema_key_decodes() -> None:
    document = native()
    del document["schema"]
    assert decode_exchange(encode(document)).id == "ex-1"


def test_native_refused_and_sentinel_fields() -> None:
    exchange = decode_exchange(encode(native(response={"content": "No.", "refused": True, "sentinel": "HELLNODAVE"})))
    assert exchange.refused is True
    assert exchange.reply_sentinel == "HELLNODAVE"


def test_openai_log_decodes() -> None:
    exchange = decode_exchange(encode(openai()))
    assert exchange.id == "chatcmpl-1"
    assert exchange.user_id == "user-9"
    assert exchange.model == "gpt-x-2026"
    assert exchange.created_at == datetime.fromtimestamp(1764583200, tz=timezone.utc)
    assert exchange.reply == "Hello"
    assert exchange.refused is None
    assert exchange.source_format == "openai-chat"


def test_openai_refusal_field_marks_refused() -> None:
    document = openai()
    document["response"]["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": "I can't."}
    assert decode_exchange(encode(document)).refused is True


def test_openai_safety_identifier_and_content_parts() -> None:
    document = openai()
    document["request"] = {
        "model": "gpt-x",
        "safety_identifier": "hashed-user",
        "messages": [{"role": "developer", "content": "Rules"}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    }
    exchange = decode_exchange(encode(document))
    assert exchange.user_id == "hashed-user"
    assert exchange.messages == (ChatMessage("system", "Rules"), ChatMessage("user", "Hi"))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty"),
        (b"{not json", "invalid_json"),
        (b"\xff\xfe{}", "invalid_utf8"),
        (b'{"id": "a\x00b"}', "nul_character"),
        (b"[1, 2]", "not_an_object"),
        (b"{}", "unknown_format"),
        (encode({"schema": "exchange/v9", "id": "x"}), "unsupported_schema"),
    ],
)
def test_malformed_values_rejected(value: bytes | None, reason: str) -> None:
    assert reason_of(value) == reason


def test_escaped_nul_in_content_rejected() -> None:
    document = native(request={"messages": [{"role": "user", "content": "a\u0000b"}]})
    assert reason_of(encode(document)) == "nul_character"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"id": ""}, "id"),
        ({"user_id": None}, "user_id"),
        ({"model": 5.5}, "model"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": "2026-12-01T10:00:00"}, "created_at"),
        ({"request": {"messages": []}}, "request.messages"),
        ({"request": {"messages": [{"role": "user", "content": 7}]}}, "content"),
        ({"request": {"messages": [{"role": "wizard", "content": "x"}]}}, "role"),
        ({"request": {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}}, "last role"),
        ({"response": {"content": "x", "refused": "yes"}}, "response.refused"),
        ({"override": {"trusted": "yes"}}, "override"),
    ],
)
def test_invalid_fields_named_in_error(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidExchangeError, match=field):
        decode_exchange(encode(native(**overrides)))


@pytest.mark.parametrize(
    ("user_id", "message"),
    [
        (12345, "user_id is a JSON number; a user id must be a JSON string"),
        (True, "user_id is a JSON boolean"),
        (["u"], "user_id is a JSON array"),
        ("tab\tuser", "control character U+0009 at index 3"),
        ("line\nuser", "control character U+000A at index 4"),
        ("carriage\rreturn", "control character U+000D"),
        ("escape\x1b", "control character U+001B"),
        ("delete\x7f", "control character U+007F"),
        ("next-line\x85", "control character U+0085"),
    ],
)
def test_user_id_must_be_printable_string(user_id: Any, message: str) -> None:
    with pytest.raises(InvalidExchangeError, match=re.escape(message)) as caught:
        decode_exchange(encode(native(user_id=user_id)))
    assert caught.value.reason == "invalid_field"


@pytest.mark.parametrize("user_id", [12345, "tab\tuser", "line\nuser"])
def test_openai_user_must_be_printable_string(user_id: Any) -> None:
    document = openai()
    document["request"]["user"] = user_id
    with pytest.raises(InvalidExchangeError, match="request.user") as caught:
        decode_exchange(encode(document))
    assert caught.value.reason == "invalid_field"


@pytest.mark.parametrize("field", ["id", "model"])
def test_exchange_id_and_model_reject_control_characters(field: str) -> None:
    with pytest.raises(InvalidExchangeError, match=re.escape(f"{field} contains the control character U+000A")) as caught:
        decode_exchange(encode(native(**{field: "line\nbreak"})))
    assert caught.value.reason == "invalid_field"


@pytest.mark.parametrize("user_id", ["org/alice", "100%", "  spaced user  ", "ユーザー", "émile\u00a0b", "a\u2028b"])
def test_user_id_keeps_printable_characters(user_id: str) -> None:
    assert decode_exchange(encode(native(user_id=user_id))).user_id == user_id


def test_openai_without_user_rejected() -> None:
    document = openai()
    del document["request"]["user"]
    assert reason_of(encode(document)) == "missing_user"


def test_too_large_rejected() -> None:
    with pytest.raises(InvalidExchangeError) as caught:
        decode_exchange(encode(native()), max_bytes=50)
    assert caught.value.reason == "too_large"


def test_encode_round_trip() -> None:
    exchange = Exchange(
        id="ex-2",
        user_id="u",
        model="m",
        created_at=datetime(2026, 12, 1, tzinfo=timezone.utc),
        messages=(ChatMessage("user", "héllo <|im_end|>"),),
        reply="hi",
        refused=False,
        override=Override(trusted=True, reason="audit"),
        metadata={"k": "v"},
    )
    assert decode_exchange(encode_exchange(exchange)) == exchange
