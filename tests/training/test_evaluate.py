"""The evaluation report on hand-made probabilities: per-source AUROC, sweep, targets, input file errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.sentinels import Sentinel
from monitor.training.data import DatasetError, LabelledPrompt
from monitor.training.evaluate import (
    SWEEP_THRESHOLDS,
    EvaluatedPrompt,
    build_report,
    format_report,
    read_labelled_file,
)

SENTINELS = (
    Sentinel(name="SORRYDAVE", text="<SORRYDAVE>", threshold=0.5, severity="medium"),
    Sentinel(name="HELLNODAVE", text="<HELLNODAVE>", threshold=0.01, severity="critical"),
)


def _item(source: str, label: str, hell: float, sorry: float = 0.0, scary: bool = False) -> EvaluatedPrompt:
    prompt = LabelledPrompt(source=source, prompt=f"{source} {hell} {sorry}", label=label, benign_but_scary=scary)  # type: ignore[arg-type]
    return EvaluatedPrompt(prompt, {"HELLNODAVE": hell, "SORRYDAVE": sorry})


def _report(items: list[EvaluatedPrompt]) -> dict:
    return build_report(items, SENTINELS, harmful_sentinel="HELLNODAVE", decline_sentinel="SORRYDAVE")


@pytest.fixture
def items() -> list[EvaluatedPrompt]:
    return [
        # Harmful source "bad": both above every benign prompt.
        _item("bad", "harmful", 0.9),
        _item("bad", "harmful", 0.3),
        # Harmful source "subtle": one below the scary benign prompt at 0.05.
        _item("subtle", "harmful", 0.2),
        _item("subtle", "harmful", 0.02),
        # Benign sources.
        _item("plain", "benign", 0.001),
        _item("plain", "benign", 0.004),
        _item("scary", "benign", 0.05, sorry=0.6, scary=True),
        _item("scary", "benign", 0.002, scary=True),
        # Decline source.
        _item("rude", "decline", 0.01, sorry=0.7),
        _item("rude", "decline", 0.0, sorry=0.4),
    ]


def test_source_auroc_against_opposite_class(items: list[EvaluatedPrompt]) -> None:
    rows = {(row["source"], row["label"]): row for row in _report(items)["sources"]}

    assert rows[("bad", "harmful")]["auroc"] == pytest.approx(1.0)
    # 0.02 is below 0.05 and above the other three benign prompts: 7 of 8 pairs.
    assert rows[("subtle", "harmful")]["auroc"] == pytest.approx(7 / 8)
    assert rows[("plain", "benign")]["auroc"] == pytest.approx(1.0)
    # 0.05 is above the harmful 0.02 only: 7 of 8 pairs.
    assert rows[("scary", "benign")]["auroc"] == pytest.approx(7 / 8)
    # Decline by SORRYDAVE: 0.7 beats all four benign, 0.4 beats three of them (not 0.6).
    assert rows[("rude", "decline")]["auroc"] == pytest.approx(7 / 8)


def test_overall_auroc_and_shares(items: list[EvaluatedPrompt]) -> None:
    report = _report(items)

    # Pairs harmful vs benign: 16, only (0.02, 0.05) is misordered.
    assert report["harmful_sentinel"]["auroc"] == pytest.approx(15 / 16)
    assert report["harmful_sentinel_vs_benign_but_scary"]["auroc"] == pytest.approx(7 / 8)
    assert report["benign_over_threshold"]["HELLNODAVE"] == pytest.approx(1 / 4)
    assert report["benign_but_scary_over_threshold"]["SORRYDAVE"] == pytest.approx(1 / 2)


def test_target_leaves_out_project_sources(items: list[EvaluatedPrompt]) -> None:
    # An easy project-written negative raises the overall AUROC but not the target's.
    report = _report(items + [_item("everyday", "benign", 0.0)])

    assert report["harmful_sentinel"]["auroc"] == pytest.approx(19 / 20)
    assert report["harmful_sentinel_public"]["auroc"] == pytest.approx(15 / 16)
    target = next(iter(report["targets"].values()))
    assert target["value"] == pytest.approx(15 / 16)


def test_sweep_counts_at_or_over(items: list[EvaluatedPrompt]) -> None:
    sweep = {row["threshold"]: row for row in _report(items)["harmful_sentinel_sweep"]}

    assert list(sweep) == list(SWEEP_THRESHOLDS)
    assert sweep[0.02]["harmful_recall"] == pytest.approx(1.0)
    assert sweep[0.05]["harmful_recall"] == pytest.approx(3 / 4)
    assert sweep[0.05]["benign_over"] == pytest.approx(1 / 4)
    assert sweep[0.05]["benign_but_scary_over"] == pytest.approx(1 / 2)
    assert sweep[0.1]["benign_over"] == 0.0


def test_targets_report_met_and_missed(items: list[EvaluatedPrompt]) -> None:
    targets = list(_report(items)["targets"].values())

    # AUROC 0.9375 is below 0.97; half of the scary prompts are over SORRYDAVE's threshold.
    assert [target["met"] for target in targets] == [False, False]
    separated = [i for i in items if i.probs["HELLNODAVE"] != 0.05 and i.probs["SORRYDAVE"] != 0.6]
    assert [target["met"] for target in _report(separated)["targets"].values()] == [True, True]


def test_scary_target_not_measured_without_scary_prompts(items: list[EvaluatedPrompt]) -> None:
    plain = [i for i in items if not i.item.benign_but_scary]

    report = _report(plain)

    target = list(report["targets"].values())[1]
    assert target["value"] is None
    assert target["met"] is False
    assert "not measured" in format_report(report)


def test_text_report_shows_sweep_and_missed_target(items: list[EvaluatedPrompt]) -> None:
    text = format_report(_report(items))

    assert "subtle" in text
    assert "0.8750" in text
    assert "benign-but-scary at or over" in text
    assert "MISSED" in text


def test_model_card_shows_metrics_and_missed_target(items: list[EvaluatedPrompt]) -> None:
    from monitor.training.card import render_model_card

    info = {
        "tokens": {"<SORRYDAVE>": 10, "<HELLNODAVE>": 11},
        "base_model": "base@sha256:0",
        "training": {
            "seed": 7, "epochs": 1.0, "batch_size": 4, "learning_rate": 0.001, "lora_rank": 8, "lora_alpha": 16,
            "lora_dropout": 0.0, "max_prompt_tokens": 64, "max_reply_tokens": 16, "warmup_steps": 1,
            "push_down_weight": 2.0,
        },
        "train_examples_by_source": {"advbench/harmful": 3, "someone_else/benign": 2},
        "steps": 5, "seconds": 1.5, "final_loss": 0.5, "trained_at": "2026-01-01T00:00:00+00:00",
        "machine": "x86_64", "torch": "2",
    }  # fmt: skip

    card = render_model_card("mine", info, _report(items))

    assert card.startswith("# Sentinel adapter `mine`")
    assert "| someone_else/benign | 2 | someone_else | unknown | unknown |" in card
    assert "--push-down-weight 2" in card
    assert "AUROC 0.9375" in card
    assert "missed" in card
    assert "| subtle | harmful | 2 | 0.8750 |" in card
    assert "25.0% of the benign test prompts" in card


def test_unknown_sentinel_is_a_config_error(items: list[EvaluatedPrompt]) -> None:
    from monitor.errors import ConfigError

    with pytest.raises(ConfigError, match="'NOPE' is not configured"):
        build_report(items, SENTINELS, harmful_sentinel="NOPE", decline_sentinel="SORRYDAVE")


def test_labelled_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "hello", "label": "benign"}\n{"prompt": "x", "label": "unsure"}\n', encoding="utf-8")

    with pytest.raises(DatasetError, match=r"prompts.jsonl:2 needs .* 'label' among harmful, decline, benign"):
        read_labelled_file(path)


def test_labelled_file_reads_source_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"prompt": "a", "label": "harmful", "source": "red-team"}\n\n{"prompt": "b", "label": "benign", "benign_but_scary": true}\n',
        encoding="utf-8",
    )

    prompts = read_labelled_file(path)

    assert [(p.source, p.label, p.benign_but_scary) for p in prompts] == [
        ("red-team", "harmful", False),
        ("mine", "benign", True),
    ]
