"""The exchange: one logged request/response pair, as the monitor sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Mapping

Role = Literal["system", "user", "assistant", "tool"]
SourceFormat = Literal["exchange/v1", "openai-chat", "prompt"]


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation."""

    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Override:
    """A request served to a trusted user with refusals deliberately bypassed."""

    trusted: bool
    reason: str | None = None


@dataclass(frozen=True)
class Exchange:
    """A request and the reply it got.

    `messages` is the conversation up to and including the last user turn; the
    reply is not part of it. `refused` and `reply_sentinel` are the serving
    side's own statement of the outcome, when it logged one.
    """

    id: str
    user_id: str
    model: str
    created_at: datetime
    messages: tuple[ChatMessage, ...]
    reply: str | None = None
    refused: bool | None = None
    reply_sentinel: str | None = None
    override: Override | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source_format: SourceFormat = "exchange/v1"

    @property
    def is_override(self) -> bool:
        return self.override is not None and self.override.trusted
