"""The api settings section: tokens from the environment and their validation."""

from __future__ import annotations

import json

import pytest

from monitor.errors import ConfigError
from monitor.settings import load_settings

DIGEST = "ab" * 32


def load_tokens(tokens: object) -> object:
    return load_settings(environ={"SENTINEL_API__TOKENS": json.dumps(tokens)}).api.tokens


def test_api_defaults() -> None:
    api = load_settings(environ={}).api
    assert api.enabled
    assert api.host == "127.0.0.1"
    assert api.port == 8686
    assert api.tokens == ()


def test_tokens_from_json_environment() -> None:
    tokens = load_tokens([{"name": "ops", "role": "reviewer", "sha256": DIGEST}])
    assert [(token.name, token.role) for token in tokens] == [("ops", "reviewer")]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ([{"name": "ops", "role": "admin", "sha256": DIGEST}], "role='admin' is invalid; choose one of viewer, reviewer"),
        ([{"name": "ops", "role": "viewer", "sha256": "xyz"}], "is not a SHA-256 hex digest"),
        ([{"name": "ops", "role": "viewer", "sha256": DIGEST[:-2]}], "is not a SHA-256 hex digest"),
        ([{"name": " ", "role": "viewer", "sha256": DIGEST}], "name is empty"),
        (
            [{"name": "ops", "role": "viewer", "sha256": DIGEST}, {"name": "ops", "role": "viewer", "sha256": "cd" * 32}],
            "duplicate names ops",
        ),
        (
            [{"name": "a", "role": "viewer", "sha256": DIGEST}, {"name": "b", "role": "reviewer", "sha256": DIGEST}],
            "the same sha256 twice",
        ),
        ([{"name": "ops", "role": "viewer", "sha256": DIGEST, "token": "plain"}], "unknown setting"),
    ],
)
def test_invalid_tokens_are_rejected(tokens: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_tokens(tokens)


def test_invalid_port_is_rejected() -> None:
    with pytest.raises(ConfigError, match="api.port=70000"):
        load_settings(environ={"SENTINEL_API__PORT": "70000"})
