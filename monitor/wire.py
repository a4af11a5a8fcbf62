"""Wire formats: decode Kafka message values into exchanges, and encode exchanges.

Accepted formats:

- `exchange/v1`, the native schema (`"schema": "exchange/v1"`, or no `schema`
  key and a `user_id` key);
- an OpenAI-style chat-completions log: `{"request": <request body>,
  "response": <response body>}`, with the user from `request.user` or
  `request.safety_identifier`.

Every failure raises `InvalidExchangeError` with a short reason code, which
the consumer copies into the dead-letter header.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Mapping

from monitor.errors import InvalidExchangeError
from monitor.exchange import ChatMessage, Exchange, Override

NATIVE_SCHEMA = "exchange/v1"
MAX_ID_LENGTH = 256
ROLES = ("system", "user", "assistant", "tool")

# C0 controls, DEL and C1 controls. An id with one of them (a tab or a line
# break, say) would be stored, but the API's routes could not match it.
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")


def decode_exchange(value: bytes | None, max_bytes: int = 1_048_576) -> Exchange:
    """Decode one message value into an exchange, or raise InvalidExchangeError."""
    document = decode_json_object(value, max_bytes)
    schema = document.get("schema")
    if schema == NATIVE_SCHEMA or (schema is None and "user_id" in document):
        return _decode_native(document)
    if schema is None and isinstance(document.get("request"), dict) and "choices" in _as_dict(document.get("response")):
        return _decode_openai(document)
    if schema is not None:
        raise InvalidExchangeError(
            "unsupported_schema", f"schema {schema!r} is not supported; send {NATIVE_SCHEMA!r} or an OpenAI chat log"
        )
    raise InvalidExchangeError(
        "unknown_format",
        "message is neither exchange/v1 (no user_id key) nor an OpenAI chat log (no request/response.choices)",
    )


def decode_json_object(value: bytes | None, max_bytes: int) -> dict[str, Any]:
    """Decode strict UTF-8 JSON that must be an object, rejecting NUL characters anywhere."""
    if value is None:
        raise InvalidExchangeError("empty", "message has no value (a tombstone or an empty record)")
    if len(value) > max_bytes:
        raise InvalidExchangeError(
            "too_large", f"message is {len(value)} bytes, above the limit of {max_bytes} (kafka.max_message_bytes)"
        )
    try:
        text = value.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidExchangeError("invalid_utf8", f"message is not valid UTF-8 at byte {exc.start}") from exc
    if "\x00" in text:
        raise InvalidExchangeError("nul_character", "message contains a NUL byte, which PostgreSQL text cannot store")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidExchangeError("invalid_json", f"message is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    if not isinstance(document, dict):
        raise InvalidExchangeError("not_an_object", f"message is a JSON {_json_type(document)}, not an object")
    _reject_nul(document, "$")
    return document


def _json_type(value: Any) -> str:
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    return names.get(type(value), type(value).__name__)


def _reject_nul(node: Any, path: str) -> None:
    # The JSON escape \u0000 survives the byte check above, so walk the decoded values too.
    if isinstance(node, str):
        if "\x00" in node:
            raise InvalidExchangeError("nul_character", f"{path} contains a NUL character (\\u0000)")
    elif isinstance(node, dict):
        for key, item in node.items():
            if "\x00" in key:
                raise InvalidExchangeError("nul_character", f"a key under {path} contains a NUL character")
            _reject_nul(item, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _reject_nul(item, f"{path}[{index}]")


def _decode_native(document: dict[str, Any]) -> Exchange:
    request = _require_dict(document, "request")
    response = _as_dict(document.get("response"))
    return Exchange(
        id=_require_id(document, "id"),
        user_id=_require_user_id(document, "user_id"),
        model=_require_id(document, "model"),
        created_at=_parse_timestamp(document.get("created_at"), "created_at"),
        messages=_decode_messages(request.get("messages"), "request.messages"),
        reply=_optional_str(response.get("content"), "response.content"),
        refused=_optional_bool(response.get("refused"), "response.refused"),
        reply_sentinel=_optional_str(response.get("sentinel"), "response.sentinel"),
        override=_decode_override(document.get("override")),
        metadata=_optional_dict(document.get("metadata"), "metadata"),
        source_format="exchange/v1",
    )


def _decode_openai(document: dict[str, Any]) -> Exchange:
    request = _require_dict(document, "request")
    response = _require_dict(document, "response")
    user_key = "user" if request.get("user") not in (None, "") else "safety_identifier"
    if request.get(user_key) in (None, ""):
        raise InvalidExchangeError("missing_user", "request.user and request.safety_identifier are both missing")
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise InvalidExchangeError("missing_field", "response.choices must be a non-empty list of objects")
    message = _require_dict(choices[0], "message", "response.choices[0].")
    refusal = message.get("refusal")
    exchange_id = document.get("id", response.get("id"))
    model = response.get("model") or request.get("model")
    return Exchange(
        id=_require_id({"id": exchange_id}, "id", "response."),
        user_id=_require_user_id(request, user_key, "request."),
        model=_require_id({"model": model}, "model", "request."),
        created_at=_parse_timestamp(response.get("created"), "response.created"),
        messages=_decode_messages(request.get("messages"), "request.messages"),
        reply=_content_text(message.get("content"), "response.choices[0].message.content", allow_none=True),
        refused=True if isinstance(refusal, str) and refusal else None,
        override=_decode_override(document.get("override")),
        metadata=_optional_dict(document.get("metadata"), "metadata"),
        source_format="openai-chat",
    )


def _decode_messages(value: Any, where: str) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidExchangeError("missing_field", f"{where} must be a non-empty list of chat messages")
    messages = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidExchangeError("invalid_field", f"{where}[{index}] must be an object with role and content")
        role = item.get("role")
        if role == "developer":
            role = "system"
        if role not in ROLES:
            raise InvalidExchangeError(
                "invalid_field", f"{where}[{index}].role is {role!r}; expected one of {', '.join(ROLES)}"
            )
        content = _content_text(item.get("content"), f"{where}[{index}].content", allow_none=role == "assistant")
        messages.append(ChatMessage(role=role, content=content or ""))
    if messages[-1].role != "user":
        raise InvalidExchangeError(
            "invalid_field", f"{where} must end with the user turn being answered; the last role is {messages[-1].role!r}"
        )
    return tuple(messages)


def _content_text(value: Any, where: str, allow_none: bool) -> str | None:
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        # OpenAI content parts: keep the text parts, in order.
        parts = [part.get("text") for part in value if isinstance(part, dict) and part.get("type") == "text"]
        texts = [p for p in parts if isinstance(p, str)]
        if texts and len(texts) == len(parts):
            return "\n".join(texts)
    raise InvalidExchangeError("invalid_field", f"{where} must be a string or a list of text parts")


def _decode_override(value: Any) -> Override | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("trusted"), bool):
        raise InvalidExchangeError("invalid_field", "override must be an object with a boolean 'trusted'")
    return Override(trusted=value["trusted"], reason=_optional_str(value.get("reason"), "override.reason"))


def _parse_timestamp(value: Any, where: str) -> datetime:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError) as exc:
            raise InvalidExchangeError("invalid_field", f"{where}={value!r} is not a valid Unix time") from exc
    if not isinstance(value, str):
        raise InvalidExchangeError("missing_field", f"{where} is missing; send an RFC 3339 timestamp")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise InvalidExchangeError("invalid_field", f"{where}={value!r} is not an RFC 3339 timestamp") from exc
    if parsed.tzinfo is None:
        raise InvalidExchangeError("invalid_field", f"{where}={value!r} has no time zone offset")
    return parsed


def _require_id(document: Mapping[str, Any], key: str, prefix: str = "") -> str:
    value = document.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidExchangeError("missing_field", f"{prefix}{key} is missing or empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidExchangeError("invalid_field", f"{prefix}{key} is {len(value)} characters, above {MAX_ID_LENGTH}")
    control = _CONTROL_CHARACTER.search(value)
    if control is not None:
        raise InvalidExchangeError(
            "invalid_field",
            f"{prefix}{key} contains the control character U+{ord(control.group()):04X} at index {control.start()}; "
            "ids must not contain tabs, line breaks or other control characters",
        )
    return value


def _require_user_id(document: Mapping[str, Any], key: str, prefix: str = "") -> str:
    value = document.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidExchangeError(
            "invalid_field", f"{prefix}{key} is a JSON {_json_type(value)}; a user id must be a JSON string"
        )
    return _require_id(document, key, prefix)


def _require_dict(document: Mapping[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
    value = document.get(key)
    if not isinstance(value, dict):
        raise InvalidExchangeError("missing_field", f"{prefix}{key} is missing or not an object")
    return value


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _optional_dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidExchangeError("invalid_field", f"{where} must be an object")
    return value


def _optional_str(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidExchangeError("invalid_field", f"{where} must be a string")


def _optional_bool(value: Any, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise InvalidExchangeError("invalid_field", f"{where} must be true or false")


def encode_exchange(exchange: Exchange) -> bytes:
    """Encode an exchange as an `exchange/v1` message value."""
    response: dict[str, Any] = {"content": exchange.reply}
    if exchange.refused is not None:
        response["refused"] = exchange.refused
    if exchange.reply_sentinel is not None:
        response["sentinel"] = exchange.reply_sentinel
    document: dict[str, Any] = {
        "schema": NATIVE_SCHEMA,
        "id": exchange.id,
        "user_id": exchange.user_id,
        "model": exchange.model,
        "created_at": exchange.created_at.isoformat(),
        "request": {"messages": [m.as_dict() for m in exchange.messages]},
        "response": response,
    }
    if exchange.override is not None:
        document["override"] = {"trusted": exchange.override.trusted, "reason": exchange.override.reason}
    if exchange.metadata:
        document["metadata"] = dict(exchange.metadata)
    return json.dumps(document, ensure_ascii=False).encode("utf-8")
