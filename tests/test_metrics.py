"""Ranking and calibration metrics on cases small enough to check by hand."""

from __future__ import annotations

import pytest

from monitor.metrics import auroc, average_precision, expected_calibration_error, reliability, share_at_or_above


def test_auroc_perfect_and_reversed() -> None:
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auroc([0.1, 0.2], [0.9, 0.8]) == 0.0


def test_auroc_counts_ties_as_half() -> None:
    assert auroc([0.5], [0.5]) == 0.5
    # Pairs: (0.9>0.5) 1, (0.9>0.1) 1, (0.5=0.5) 0.5, (0.5>0.1) 1 -> 3.5 / 4.
    assert auroc([0.9, 0.5], [0.5, 0.1]) == pytest.approx(0.875)


def test_auroc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        auroc([0.5], [])


def test_average_precision_hand_computed() -> None:
    # Ranking: 0.9 (pos), 0.8 (neg), 0.7 (pos): precisions 1/1 and 2/3.
    assert average_precision([0.9, 0.7], [0.8]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.9, 0.8], [0.1]) == 1.0


def test_reliability_bins_and_ece() -> None:
    predicted = [0.05, 0.05, 0.95, 0.95]
    observed = [False, True, True, True]
    table = reliability(predicted, observed, bins=10)
    assert [(row.lower, row.count) for row in table] == [(0.0, 2), (0.9, 2)]
    assert table[0].observed_rate == 0.5
    # Gaps: |0.05 - 0.5| on 2 rows and |0.95 - 1.0| on 2 rows.
    assert expected_calibration_error(predicted, observed) == pytest.approx((2 * 0.45 + 2 * 0.05) / 4)


def test_probability_one_falls_in_last_bin() -> None:
    assert reliability([1.0], [True], bins=4)[0].lower == 0.75


def test_share_at_or_above_threshold() -> None:
    assert share_at_or_above([0.1, 0.5, 0.9, 0.4], 0.5) == 0.5
    assert share_at_or_above([], 0.5) == 0.0
