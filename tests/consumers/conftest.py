"""Fixtures for the pipeline tests: a tiny model on disk, the test database, the local Kafka."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest_db import database_engine, database_settings, session_factory
from tests.consumers.harness import require_kafka
from tests.scoring.factories import load_tokenizer, tiny_model

__all__ = ["database_engine", "database_settings", "session_factory"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    """A tiny random model with the real tokenizer, saved as a model directory the daemon can load."""
    directory = tmp_path_factory.mktemp("tiny-model")
    tokenizer = load_tokenizer(model_path)
    tiny_model(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def kafka_available() -> None:
    require_kafka()
