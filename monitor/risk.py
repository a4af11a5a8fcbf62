"""Per-user risk score: how far a user's expected bypassed refusals exceed what the population predicts.

For one sentinel s and one window, take every answered exchange that is not
an override. A user with n such exchanges has an expected number of bypassed
refusals E = sum of P(s) over them: the refusals the model would have made
had it sampled its sentinel. The rest of the population, the same exchanges
of every other user, gives a mean m and a variance v of P(s) per exchange. If
the user's requests were like everyone else's, E would be close to n * m,
with a standard deviation of sqrt(n * v). The excess

    excess_s = max(0, E - n * m - z * sqrt(n * v))

is what remains after allowing `z` standard deviations of chance. A user who
sends many ordinary requests has E near n * m and no excess, however large n
is. The risk score adds the excess of all sentinels and maps it to [0, 1):

    risk = 1 - exp(-(sum of excess_s) / scale)

so an excess of `scale` expected bypassed refusals gives 0.63, and twice that
gives 0.86. docs/risk.md works through an example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class ProbabilitySums:
    """Count, sum and sum of squares of one sentinel's probability over a set of answered exchanges."""

    count: int = 0
    total: float = 0.0
    total_squares: float = 0.0

    def __sub__(self, other: ProbabilitySums) -> ProbabilitySums:
        return ProbabilitySums(
            count=self.count - other.count,
            total=self.total - other.total,
            total_squares=self.total_squares - other.total_squares,
        )

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count > 0 else 0.0

    @property
    def variance(self) -> float:
        if self.count <= 0:
            return 0.0
        # Rounding can make E[p^2] - E[p]^2 slightly negative when all values are equal.
        return max(0.0, self.total_squares / self.count - self.mean**2)


@dataclass(frozen=True)
class SentinelRisk:
    """One sentinel's share of a user's risk, with the numbers that produce it."""

    sentinel: str
    answered: int
    expected_bypassed: float
    population_mean: float
    population_std: float
    expected_from_population: float
    allowance: float
    excess: float

    def as_json(self) -> dict[str, Any]:
        return {
            "sentinel": self.sentinel,
            "answered": self.answered,
            "expected_bypassed": self.expected_bypassed,
            "population_mean": self.population_mean,
            "population_std": self.population_std,
            "expected_from_population": self.expected_from_population,
            "allowance": self.allowance,
            "excess": self.excess,
        }


def sentinel_risk(sentinel: str, user: ProbabilitySums, population: ProbabilitySums, *, z: float) -> SentinelRisk:
    """Compare a user's sums with the population's, leaving the user out of the population."""
    others = population - user
    expected = user.count * others.mean
    allowance = z * math.sqrt(user.count * others.variance)
    excess = max(0.0, user.total - expected - allowance)
    return SentinelRisk(
        sentinel=sentinel,
        answered=user.count,
        expected_bypassed=user.total,
        population_mean=others.mean,
        population_std=math.sqrt(others.variance),
        expected_from_population=expected,
        allowance=allowance,
        excess=excess,
    )


def risk_score(parts: Mapping[str, SentinelRisk] | list[SentinelRisk], *, scale: float) -> float:
    """Map the summed excess of all sentinels to [0, 1)."""
    values = parts.values() if isinstance(parts, Mapping) else parts
    excess = sum(part.excess for part in values)
    return 1.0 - math.exp(-excess / scale)
