"""Shared test helpers: paths of the pulled model and the public datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def datasets_dir() -> Path:
    return Path(os.environ.get("SENTINEL_DATASETS_DIR", REPO_ROOT.parent / "shared" / "datasets"))


def default_model_path() -> Path:
    from monitor.model_store import default_model_dir, is_pulled
    from monitor.settings import load_settings

    cache = Path(load_settings().model.cache_dir)
    if not is_pulled(cache):
        pytest.fail(f"the default model is not in {cache}; run `sentinel-monitor model pull` (scripts/test does)")
    return default_model_dir(cache)


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    """A tiny random model with the real tokenizer, saved as a model directory a subprocess can load."""
    from tests.scoring.factories import load_tokenizer, tiny_model

    directory = tmp_path_factory.mktemp("tiny-model")
    tokenizer = load_tokenizer(model_path)
    tiny_model(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def public_datasets() -> Path:
    path = datasets_dir()
    if not path.is_dir():
        pytest.skip(f"public datasets folder not found at {path}; set SENTINEL_DATASETS_DIR")
    return path
