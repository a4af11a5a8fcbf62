"""Ranking and calibration metrics for refusal probabilities: AUROC, average precision, ECE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Probability that a random positive scores above a random negative; ties count one half."""
    if not positives or not negatives:
        raise ValueError("AUROC needs at least one positive and one negative score")
    ranked = sorted([(score, 1) for score in positives] + [(score, 0) for score in negatives])
    rank_sum = 0.0
    index = 0
    while index < len(ranked):
        end = index
        while end + 1 < len(ranked) and ranked[end + 1][0] == ranked[index][0]:
            end += 1
        average_rank = (index + end) / 2 + 1  # 1-based ranks, ties share their mean rank
        rank_sum += average_rank * sum(label for _, label in ranked[index : end + 1])
        index = end + 1
    count_pos, count_neg = len(positives), len(negatives)
    return (rank_sum - count_pos * (count_pos + 1) / 2) / (count_pos * count_neg)


def average_precision(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Mean of the precision at each positive, ranking by score from high to low (ties broken pessimistically)."""
    if not positives:
        raise ValueError("average precision needs at least one positive score")
    ranked = sorted([(score, 0) for score in negatives] + [(score, 1) for score in positives], key=lambda item: -item[0])
    hits = 0
    total = 0.0
    for position, (_, label) in enumerate(ranked, start=1):
        if label:
            hits += 1
            total += hits / position
    return total / len(positives)


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    mean_predicted: float
    observed_rate: float


def reliability(predicted: Sequence[float], observed: Sequence[bool], bins: int = 10) -> list[ReliabilityBin]:
    """Group predictions into equal-width probability bins with their observed positive rate."""
    if len(predicted) != len(observed):
        raise ValueError(f"{len(predicted)} predictions but {len(observed)} outcomes")
    table = []
    for number in range(bins):
        lower, upper = number / bins, (number + 1) / bins
        members = [
            (p, o) for p, o in zip(predicted, observed) if lower <= p < upper or (number == bins - 1 and p == 1.0)
        ]
        if members:
            table.append(
                ReliabilityBin(
                    lower=lower,
                    upper=upper,
                    count=len(members),
                    mean_predicted=sum(p for p, _ in members) / len(members),
                    observed_rate=sum(1 for _, o in members if o) / len(members),
                )
            )
    return table


def expected_calibration_error(predicted: Sequence[float], observed: Sequence[bool], bins: int = 10) -> float:
    """Count-weighted mean gap between predicted probability and observed rate over the reliability bins."""
    table = reliability(predicted, observed, bins)
    total = sum(row.count for row in table)
    return sum(row.count * abs(row.mean_predicted - row.observed_rate) for row in table) / total if total else 0.0


def share_at_or_above(scores: Sequence[float], threshold: float) -> float:
    return sum(1 for score in scores if score >= threshold) / len(scores) if scores else 0.0
