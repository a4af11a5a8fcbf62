"""Load a causal language model and its tokenizer for scoring, and compute their identity."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from monitor.errors import ModelError
from monitor.scores import ScorerIdentity

logger = logging.getLogger(__name__)

# Written next to the weights by `sentinel-monitor model pull`; optional for other directories.
IDENTITY_FILE = "sentinel-model.json"


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    tokenizer: Any
    identity: ScorerIdentity
    device: torch.device


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.device is 'cuda' but torch sees no CUDA device; set model.device to 'cpu' or 'auto'")
    return torch.device(requested)


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]


def load_model(path: Path, *, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a Hugging Face model directory for scoring, in eval mode on the chosen device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    if not (path / "config.json").is_file():
        raise ModelError(
            f"no model found at {path} (config.json is missing); run `sentinel-monitor model pull` "
            "or set model.path to a Hugging Face model directory"
        )
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    # A safetensors directory loads in about a second; its progress bar is noise.
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa")
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"could not load the model at {path}: {exc}") from exc
    finally:
        transformers_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    model = model.to(torch_device).eval()  # type: ignore[arg-type]
    identity = compute_identity(path, tokenizer)
    logger.info(
        "model loaded: path=%s model_id=%s device=%s dtype=%s", path, identity.model_id, torch_device, torch_dtype
    )
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity, device=torch_device)


def compute_identity(path: Path, tokenizer: Any) -> ScorerIdentity:
    """Identify the model, its chat template and its tokenizer by content hashes."""
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        raise ModelError(
            f"the tokenizer at {path} has no chat template; scoring renders the served model's template"
        )
    return ScorerIdentity(
        model_id=_model_id(path),
        template_sha256=_sha256(template.encode("utf-8")),
        tokenizer_sha256=_sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")),
    )


def _model_id(path: Path) -> str:
    identity_file = path / IDENTITY_FILE
    if identity_file.is_file():
        return str(json.loads(identity_file.read_text(encoding="utf-8"))["model_id"])
    config_hash = _sha256((path / "config.json").read_bytes())[:12]
    return f"{path.name}@config-{config_hash}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
