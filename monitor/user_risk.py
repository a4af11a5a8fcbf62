"""A user's risk per rolling window: activity, expected bypassed refusals, score, trend and the evidence."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from monitor.risk import ProbabilitySums, SentinelRisk, risk_score, sentinel_risk
from monitor.settings import RiskSettings
from storage.activity import TimeWindow, count_user_exchanges
from storage.risk import UserSentinelSums, population_sums, top_contributions, user_sums


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
    population = population_sums(session, window)
    sums = user_sums(session, user_ids, window)
    result = {}
    for user_id in user_ids:
        parts = _sentinel_parts(population, sums.get(user_id, {}), settings)
        result[user_id] = (risk_score(parts, scale=settings.scale), parts)
    return result


def user_risk(session: Session, user_id: str, settings: RiskSettings, *, now: datetime) -> list[WindowRisk]:
    """Compute the user's risk in each configured window ending at `now`."""
    return [_window_risk(session, user_id, window_s, settings, now) for window_s in settings.windows_s]


def _window_risk(session: Session, user_id: str, window_s: int, settings: RiskSettings, now: datetime) -> WindowRisk:
    length = timedelta(seconds=window_s)
    window = TimeWindow.ending(now, length)
    previous = TimeWindow.ending(now - length, length)

    parts, sums = _parts(session, user_id, window, settings)
    previous_parts, _ = _parts(session, user_id, previous, settings)
    counts = count_user_exchanges(session, [user_id], window).get(user_id)
    return WindowRisk(
        window_s=window_s,
        exchanges=counts.exchanges if counts else 0,
        answered=max((part.answered for part in parts), default=0),
        injection_attempts=counts.injection_attempts if counts else 0,
        slip_throughs={name: entry.slip_throughs for name, entry in sums.items()},
        max_prob={name: entry.max_prob for name, entry in sums.items()},
        expected_bypassed=sum(part.expected_bypassed for part in parts),
        sentinels=tuple(parts),
        risk=risk_score(parts, scale=settings.scale),
        previous_risk=risk_score(previous_parts, scale=settings.scale),
        evidence=tuple(top_contributions(session, user_id, window, limit=settings.evidence_limit)),
    )


def _parts(
    session: Session, user_id: str, window: TimeWindow, settings: RiskSettings
) -> tuple[list[SentinelRisk], dict[str, UserSentinelSums]]:
    population = population_sums(session, window)
    mine = user_sums(session, [user_id], window).get(user_id, {})
    return _sentinel_parts(population, mine, settings), mine


def _sentinel_parts(
    population: dict[str, ProbabilitySums], mine: dict[str, UserSentinelSums], settings: RiskSettings
) -> list[SentinelRisk]:
    # A sentinel the user has no answered exchange for still appears, with n = 0 and no excess.
    return [
        sentinel_risk(name, mine[name].sums if name in mine else ProbabilitySums(), totals, z=settings.z)
        for name, totals in sorted(population.items())
    ]


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
