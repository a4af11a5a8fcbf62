"""The `train-sentinels` and `evaluate` commands."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from monitor.errors import ConfigError
from monitor.settings import Settings

DEFAULT_DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def datasets_default() -> str:
    return os.environ.get("SENTINEL_DATASETS_DIR", str(DEFAULT_DATASETS))


def add_training_commands(commands: Any) -> None:
    # monitor.cli calls this while building its parser, so it is fully imported by then.
    from monitor.cli import positive_int

    train = commands.add_parser("train-sentinels", help="teach a base model the sentinel tokens (LoRA adapter)")
    train.add_argument("--datasets", default=datasets_default(), help="public datasets folder (default: $SENTINEL_DATASETS_DIR)")
    train.add_argument("--output", required=True, help="folder for the adapter")
    train.add_argument("--base-model", default=None, help="base model folder (default: the pulled default model)")
    train.add_argument("--seed", type=int, default=1234, help="seed of data order, apologies and LoRA start (default 1234)")
    train.add_argument("--epochs", type=_positive_float, default=2.5, help="passes over the train split (default 2.5)")
    train.add_argument("--batch-size", type=positive_int, default=16, help="examples per step (default 16)")
    train.add_argument("--learning-rate", type=_positive_float, default=2e-4, help="peak AdamW learning rate (default 2e-4)")
    train.add_argument("--lora-rank", type=positive_int, default=16, help="LoRA rank; alpha is twice the rank (default 16)")
    train.add_argument(
        "--push-down-weight",
        type=_non_negative_float,
        default=2.0,
        help="weight of the loss that keeps sentinels off benign prompts (default 2.0)",
    )
    train.add_argument(
        "--max-steps", type=positive_int, default=None, help="stop after this many steps, for a quick check (default: all)"
    )
    train.add_argument("--force", action="store_true", help="write into an output folder that already has files")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="score labelled prompts and report AUROC, precision and calibration")
    evaluate.add_argument("--datasets", default=datasets_default(), help="public datasets folder (default: $SENTINEL_DATASETS_DIR)")
    evaluate.add_argument("--split", choices=["test", "train", "all"], default="test", help="which split of the datasets (default test)")
    evaluate.add_argument("--input", default=None, help="a labelled JSON lines file instead of the datasets")
    evaluate.add_argument(
        "--harmful-sentinel", default="HELLNODAVE", help="sentinel of seriously harmful requests (default HELLNODAVE)"
    )
    evaluate.add_argument("--decline-sentinel", default="SORRYDAVE", help="sentinel of polite refusals (default SORRYDAVE)")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.add_argument(
        "--save-metrics",
        action="store_true",
        help="store the report as metrics.json in the adapter's folder and render its model card again "
        "(test split of the datasets only)",
    )
    evaluate.set_defaults(handler=_evaluate)


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.model_store import default_model_dir
    from monitor.training.trainer import TrainingConfig, train_sentinels

    _check_output(Path(args.output), force=args.force)
    base = args.base_model or str(default_model_dir(Path(settings.model.cache_dir)))
    config = TrainingConfig(
        base_model=base,
        datasets=args.datasets,
        output=args.output,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lora_rank=args.lora_rank,
        lora_alpha=2 * args.lora_rank,
        push_down_weight=args.push_down_weight,
        device=settings.model.device,
        max_steps=args.max_steps,
    )
    summary = train_sentinels(config)
    print(
        f"adapter saved to {args.output}: {summary.steps} steps over {summary.examples} examples "
        f"in {summary.seconds:.0f} s, final loss {summary.final_loss:.4f}"
    )
    return 0


def _check_output(output: Path, *, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; give a folder for the adapter")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ConfigError(f"--output {output} already has files; choose an empty folder or pass --force to overwrite them")


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}; it must be positive")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}; use a decimal number such as 2.5") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}; it must be finite and not negative")
    return value


def _evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.model_store import load_scorer
    from monitor.training.data import load_all
    from monitor.training.evaluate import build_report, format_report, read_labelled_file, score_prompts

    adapter = _adapter_to_update(args, settings) if args.save_metrics else None
    if args.input:
        prompts = read_labelled_file(Path(args.input))
    else:
        prompts = [p for p in load_all(Path(args.datasets)) if args.split == "all" or p.split == args.split]
    if not prompts:
        raise ConfigError("no labelled prompts to evaluate")
    scorer = load_scorer(settings.model, settings)
    with tqdm(total=len(prompts), unit="prompt", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        evaluated = score_prompts(scorer, prompts, progress=bar.update)
    report = build_report(
        evaluated, scorer.sentinels, harmful_sentinel=args.harmful_sentinel, decline_sentinel=args.decline_sentinel
    )
    report["model_id"] = scorer.identity.model_id
    report["split"] = "file " + args.input if args.input else args.split
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if adapter is not None:
        _save_metrics(adapter, report)
    return 0


def _adapter_to_update(args: argparse.Namespace, settings: Settings) -> Path:
    from monitor.model_store import resolve_adapter

    if args.input or args.split != "test":
        raise ConfigError("--save-metrics stores test-split metrics only; drop --input and --split")
    adapter = resolve_adapter(settings.model)
    if adapter is None:
        raise ConfigError("--save-metrics needs an adapter, but model.adapter selects none; set model.adapter to its folder")
    return adapter


def _save_metrics(adapter: Path, report: dict[str, Any]) -> None:
    from monitor.training.card import METRICS_FILE, write_model_card

    (adapter / METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    card = write_model_card(adapter)
    print(f"metrics saved to {adapter / METRICS_FILE}; model card {card} updated", file=sys.stderr)
