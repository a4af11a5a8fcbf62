"""The risk statistics on hand-computed numbers, including the worked example of docs/risk.md."""

from __future__ import annotations

import math

import pytest

from monitor.risk import ProbabilitySums, risk_score, sentinel_risk


def _sums(values: list[float]) -> ProbabilitySums:
    return ProbabilitySums(count=len(values), total=sum(values), total_squares=sum(v * v for v in values))


def _plus(a: ProbabilitySums, b: ProbabilitySums) -> ProbabilitySums:
    return ProbabilitySums(a.count + b.count, a.total + b.total, a.total_squares + b.total_squares)


# Everyone else: 1,000 answered exchanges with mean 0.02 and standard deviation 0.05.
OTHERS = ProbabilitySums(count=1000, total=20.0, total_squares=1000 * (0.05**2 + 0.02**2))


def test_sums_mean_and_variance() -> None:
    sums = _sums([0.1, 0.3])

    assert sums.mean == pytest.approx(0.2)
    assert sums.variance == pytest.approx(0.01)
    assert ProbabilitySums().mean == 0.0
    assert ProbabilitySums().variance == 0.0


def test_equal_values_have_zero_variance() -> None:
    assert _sums([0.1] * 3).variance == 0.0


def test_worked_example_abusive_user() -> None:
    user = ProbabilitySums(count=6, total=3.0, total_squares=6 * 0.5**2)

    part = sentinel_risk("HELLNODAVE", user, _plus(OTHERS, user), z=2.0)

    assert part.population_mean == pytest.approx(0.02)
    assert part.population_std == pytest.approx(0.05)
    assert part.expected_from_population == pytest.approx(0.12)
    assert part.allowance == pytest.approx(2 * math.sqrt(6 * 0.0025))
    assert part.excess == pytest.approx(3.0 - 0.12 - 2 * math.sqrt(0.015))
    assert risk_score([part], scale=1.0) == pytest.approx(1 - math.exp(-part.excess))
    assert risk_score([part], scale=1.0) == pytest.approx(0.928, abs=1e-3)


def test_worked_example_heavy_benign_user() -> None:
    # 400 requests, slightly above the population's mean: chance explains it.
    user = ProbabilitySums(count=400, total=8.4, total_squares=400 * (0.05**2 + 0.021**2))

    part = sentinel_risk("HELLNODAVE", user, _plus(OTHERS, user), z=2.0)

    assert part.expected_from_population == pytest.approx(8.0)
    assert part.allowance == pytest.approx(2.0)
    assert part.excess == 0.0
    assert risk_score([part], scale=1.0) == 0.0


def test_many_requests_alone_never_raise_risk() -> None:
    for count in (10, 1_000, 100_000):
        user = ProbabilitySums(count=count, total=count * 0.02, total_squares=count * (0.05**2 + 0.02**2))
        part = sentinel_risk("HELLNODAVE", user, _plus(OTHERS, user), z=2.0)
        assert part.excess == 0.0, count


def test_user_is_left_out_of_population() -> None:
    # The only user: no one to compare with, so every expected bypass is excess.
    user = _sums([0.4, 0.6])

    part = sentinel_risk("SORRYDAVE", user, user, z=2.0)

    assert part.population_mean == 0.0
    assert part.excess == pytest.approx(1.0)


def test_excess_of_sentinels_adds_up() -> None:
    first = sentinel_risk("A", _sums([1.0]), _sums([1.0]), z=2.0)
    second = sentinel_risk("B", _sums([0.5]), _sums([0.5]), z=2.0)

    assert risk_score({"A": first, "B": second}, scale=1.5) == pytest.approx(1 - math.exp(-1.0))
