"""A user's risk per rolling window: activity, expected bypassed refusals, score, trend and the evidence."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from monitor.risk import ProbabilitySums, SentinelRisk, risk_score, sentinel_risk
from monitor.settings import RiskSettings
from storage.activity import ExchangeCounts, TimeWindow
from storage.baselines import baseline_key, cached_population_sums
from storage.risk import (
    UserSentinelSums,
    count_user_exchanges_by_window,
    population_sums,
    top_contributions_by_window,
    user_sums,
    user_sums_by_window,
)


@dataclass(frozen=True)
class WindowRisk:
    """One user's risk in one window, with the window before it for the trend."""

    window_s: int
    exchanges: int
    answered: int
    injection_attempts: int
    slip_throughs: dict[str, int]
    max_prob: dict[str, float]
    expected_bypassed: float
    sentinels: tuple[SentinelRisk, ...]
    risk: float
    previous_risk: float
    evidence: tuple[tuple[str, str, float], ...]

    @property
    def trend(self) -> float:
        return self.risk - self.previous_risk

    def as_json(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "exchanges": self.exchanges,
            "answered": self.answered,
            "injection_attempts": self.injection_attempts,
            "slip_throughs": dict(self.slip_throughs),
            "max_prob": dict(self.max_prob),
            "expected_bypassed": self.expected_bypassed,
            "sentinels": [part.as_json() for part in self.sentinels],
            "risk": self.risk,
            "previous_risk": self.previous_risk,
            "trend": self.trend,
            "evidence": [
                {"exchange_id": exchange_id, "sentinel": sentinel, "prob": prob}
                for exchange_id, sentinel, prob in self.evidence
            ],
        }


def risk_for_users(
    session: Session, user_ids: list[str], window: TimeWindow, settings: RiskSettings
) -> dict[str, tuple[float, list[SentinelRisk]]]:
    """Compute the risk score of several users in one window, with one population query."""
    population = _population(session, {window: False}, settings)[window]
    sums = user_sums(session, user_ids, window)
    result = {}
    for user_id in user_ids:
        parts = _sentinel_parts(population, sums.get(user_id, {}), settings)
        result[user_id] = (risk_score(parts, scale=settings.scale), parts)
    return result


def user_risk(session: Session, user_id: str, settings: RiskSettings, *, now: datetime) -> list[WindowRisk]:
    """Compute the user's risk in each configured window ending at `now`.

    The population sums come from the cache (storage/baselines.py). The
    user's own numbers take one query each for the sums over every window and
    the window before it, the exchange counts, and the evidence.
    """
    pairs = [_window_pair(now, window_s) for window_s in settings.windows_s]
    current = [window for window, _ in pairs]
    population = _population(session, {w: previous for pair in pairs for w, previous in zip(pair, (False, True))}, settings)
    mine = user_sums_by_window(session, user_id, [w for pair in pairs for w in pair])
    counts = count_user_exchanges_by_window(session, user_id, current)
    evidence = top_contributions_by_window(session, user_id, current, limit=settings.evidence_limit)
    return [
        _window_risk(
            window_s,
            _WindowFacts(pair, (mine[2 * i], mine[2 * i + 1]), counts[i], evidence[i]),
            population,
            settings,
        )
        for i, (window_s, pair) in enumerate(zip(settings.windows_s, pairs))
    ]


@dataclass(frozen=True)
class _WindowFacts:
    """One user's numbers for one report window and the window before it."""

    windows: tuple[TimeWindow, TimeWindow]
    sums: tuple[dict[str, UserSentinelSums], dict[str, UserSentinelSums]]
    counts: ExchangeCounts
    evidence: list[tuple[str, str, float]]


def _window_pair(now: datetime, window_s: int) -> tuple[TimeWindow, TimeWindow]:
    length = timedelta(seconds=window_s)
    return TimeWindow.ending(now, length), TimeWindow.ending(now - length, length)


def _population(
    session: Session, windows: dict[TimeWindow, bool], settings: RiskSettings
) -> dict[TimeWindow, dict[str, ProbabilitySums]]:
    """Sum the population over each window, which maps to whether it is the window before a report window."""
    keyed: dict[int, TimeWindow] = {}
    result: dict[TimeWindow, dict[str, ProbabilitySums]] = {}
    for window, previous in windows.items():
        length = window.end - window.start
        if length.total_seconds() != int(length.total_seconds()):
            # Cache keys are whole seconds.
            result[window] = population_sums(session, window)
        else:
            keyed[baseline_key(int(length.total_seconds()), previous=previous)] = window
    max_age = timedelta(seconds=settings.baseline_max_age_s)
    for key, sums in cached_population_sums(session, keyed, max_age=max_age).items():
        result[keyed[key]] = sums
    return result


def _window_risk(
    window_s: int,
    facts: _WindowFacts,
    population: dict[TimeWindow, dict[str, ProbabilitySums]],
    settings: RiskSettings,
) -> WindowRisk:
    window, previous = facts.windows
    mine, before = facts.sums
    parts = _sentinel_parts(population[window], mine, settings)
    previous_parts = _sentinel_parts(population[previous], before, settings)
    return WindowRisk(
        window_s=window_s,
        exchanges=facts.counts.exchanges,
        answered=max((part.answered for part in parts), default=0),
        injection_attempts=facts.counts.injection_attempts,
        slip_throughs={name: entry.slip_throughs for name, entry in mine.items()},
        max_prob={name: entry.max_prob for name, entry in mine.items()},
        expected_bypassed=sum(part.expected_bypassed for part in parts),
        sentinels=tuple(parts),
        risk=risk_score(parts, scale=settings.scale),
        previous_risk=risk_score(previous_parts, scale=settings.scale),
        evidence=tuple(facts.evidence),
    )


def _sentinel_parts(
    population: dict[str, ProbabilitySums], mine: dict[str, UserSentinelSums], settings: RiskSettings
) -> list[SentinelRisk]:
    # A sentinel the user has no answered exchange for still appears, with n = 0 and no excess.
    parts = []
    for name in sorted(population.keys() | mine.keys()):
        user = mine[name].sums if name in mine else ProbabilitySums()
        parts.append(sentinel_risk(name, user, _covering(population.get(name, ProbabilitySums()), user), z=settings.z))
    return parts


def _covering(population: ProbabilitySums, user: ProbabilitySums) -> ProbabilitySums:
    # Cached population sums can miss a few of the user's newest rows (docs/risk.md), and
    # leaving the user out must not take the rest of the population below zero.
    return ProbabilitySums(
        max(population.count, user.count),
        max(population.total, user.total),
        max(population.total_squares, user.total_squares),
    )


def user_risk_json(user_id: str, windows: list[WindowRisk]) -> dict[str, Any]:
    """Build the JSON of a user's risk report, shared by `users risk --json` and the HTTP API."""
    return {"user_id": user_id, "windows": [window.as_json() for window in windows]}


def format_user_risk(user_id: str, windows: list[WindowRisk]) -> str:
    """Render a user's risk report as plain text: one block per window."""
    lines = [f"user {user_id}"]
    for window in windows:
        slips = " ".join(f"{name}={count}" for name, count in sorted(window.slip_throughs.items())) or "none"
        lines += [
            "",
            f"last {_hours(window.window_s)}: risk {window.risk:.2f} (trend {window.trend:+.2f}), "
            f"{window.exchanges} exchange(s), {window.answered} answered, "
            f"{window.injection_attempts} injection attempt(s), slip-throughs {slips}",
            f"  {'sentinel':<12} {'n':>6} {'E':>9} {'mean':>9} {'std':>9} {'n*mean':>9} {'allowance':>9} {'excess':>9}",
        ]
        for part in window.sentinels:
            lines.append(
                f"  {part.sentinel:<12} {part.answered:>6} {part.expected_bypassed:>9.3f} {part.population_mean:>9.4f} "
                f"{part.population_std:>9.4f} {part.expected_from_population:>9.3f} {part.allowance:>9.3f} "
                f"{part.excess:>9.3f}"
            )
        if window.evidence:
            lines.append("  highest probabilities among answered exchanges:")
            lines += [f"    {exchange_id}  {sentinel}={prob:.3g}" for exchange_id, sentinel, prob in window.evidence]
    return "\n".join(lines)


def _hours(seconds: int) -> str:
    if seconds % 86_400 == 0:
        return f"{seconds // 86_400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds}s"
