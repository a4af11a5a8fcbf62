"""Load a causal language model and its tokenizer for scoring, and compute their identity."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from monitor.errors import ModelError
from monitor.scores import ScorerIdentity

logger = logging.getLogger(__name__)

# Written next to the weights by `sentinel-monitor model pull`; optional for other directories.
IDENTITY_FILE = "sentinel-model.json"
# Written next to the LoRA weights by `sentinel-monitor train-sentinels`: the added tokens and their ids.
ADAPTER_INFO_FILE = "sentinel-adapter.json"


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


def load_model(path: Path, *, device: str = "auto", dtype: str = "auto", adapter: Path | None = None) -> LoadedModel:
    """Load a Hugging Face model directory for scoring, in eval mode on the chosen device.

    With `adapter`, a sentinel adapter made by `sentinel-monitor train-sentinels`
    is applied: its special tokens are added to the tokenizer, the embeddings
    grow to match, and the LoRA weights are merged into the model.
    """
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
        # The adapter is merged in float32, then the model is cast to the requested dtype.
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"could not load the model at {path}: {exc}") from exc
    finally:
        transformers_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    adapter_id = None
    if adapter is not None:
        model, tokenizer, adapter_id = apply_adapter(model, tokenizer, adapter)
    model = model.to(device=torch_device, dtype=torch_dtype).eval()  # type: ignore[call-arg]
    identity = compute_identity(path, tokenizer, adapter_id)
    logger.info(
        "model loaded: path=%s adapter=%s model_id=%s device=%s dtype=%s",
        path, adapter, identity.model_id, torch_device, torch_dtype,
    )  # fmt: skip
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity, device=torch_device)


def apply_adapter(model: Any, tokenizer: Any, adapter: Path) -> tuple[Any, Any, str]:
    """Add the adapter's sentinel tokens, merge its LoRA weights, and return the model, tokenizer and adapter id."""
    from peft import PeftModel

    info_path = adapter / ADAPTER_INFO_FILE
    if not info_path.is_file():
        raise ModelError(f"no sentinel adapter at {adapter} ({ADAPTER_INFO_FILE} is missing)")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    tokens: dict[str, int] = info["tokens"]
    tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)})
    for token, expected in tokens.items():
        actual = tokenizer.convert_tokens_to_ids(token)
        if actual != expected:
            raise ModelError(
                f"the adapter at {adapter} expects {token} to be token {expected}, but this tokenizer gives {actual}; "
                f"the adapter was trained for {info.get('base_model')!r}, not this model"
            )
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    try:
        with warnings.catch_warnings():
            # peft calls a transformers method that transformers 5 deprecates; nothing for our users to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"could not apply the adapter at {adapter}: {exc}") from exc
    weights = adapter / "adapter_model.safetensors"
    adapter_id = f"{adapter.name}@sha256:{_sha256(weights.read_bytes())[:16]}"
    return model, tokenizer, adapter_id


def compute_identity(path: Path, tokenizer: Any, adapter_id: str | None = None) -> ScorerIdentity:
    """Identify the model (and adapter), its chat template and its tokenizer by content hashes."""
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        raise ModelError(
            f"the tokenizer at {path} has no chat template; scoring renders the served model's template"
        )
    model_id = _model_id(path) if adapter_id is None else f"{_model_id(path)}+{adapter_id}"
    return ScorerIdentity(
        model_id=model_id,
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
