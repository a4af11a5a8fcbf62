"""Cached population sums (table `population_baselines`), corrected on read so they match a live aggregate.

Summing every user's probabilities over a 7-day window reads every answered
exchange in it. The cache stores those sums once per window length, and a
query corrects them with what changed since, which is a few small index reads:

- plus the exchanges in the queried window that were ingested after the cache
  was computed, or that lie outside the cached window (the window moved on);
- minus the exchanges of the cached window that lie outside the queried one.

Keys: a row's `window_s` is the window length L in seconds, and the row holds
the sums over `window_end - L < created_at <= window_end`. The same window one
length earlier, which the risk trend compares with, is stored under -L, because
the table has no other column to tell the two apart. `baseline_key` builds both.

A corrected baseline can still differ from a live aggregate in two cases:
exchanges whose ingest transaction was still open when the baseline was
computed, and exchanges deleted since. Both last until the next refresh, and
docs/risk.md bounds them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, DateTime, Select, and_, bindparam, delete, func, insert, or_, select
from sqlalchemy.orm import Session

from monitor.risk import ProbabilitySums
from storage.activity import TimeWindow
from storage.errors import StorageError, translate_errors
from storage.job_runs import try_advisory_xact_lock
from storage.models import ExchangeRecord, PopulationBaselineRecord, ScoreRecord
from storage.risk import population_sums

logger = logging.getLogger(__name__)

# The advisory lock that the baseline job and `try_store_baselines` take before
# writing population_baselines, so that neither waits on the other's row locks.
# The baseline job also records its runs under this name.
BASELINE_LOCK = "refresh_baselines"
_PARALLEL_SETTING = "max_parallel_workers_per_gather"


@dataclass(frozen=True)
class PopulationBaseline:
    """Population sums per sentinel over `window`, as visible when the database clock read `computed_at`."""

    key: int
    window: TimeWindow
    computed_at: datetime
    sums: dict[str, ProbabilitySums]


def baseline_key(window_s: int, *, previous: bool = False) -> int:
    """Return the `population_baselines.window_s` key of a window length, or of the window before it."""
    if window_s <= 0:
        raise ValueError(f"window length {window_s} s is invalid: it must be positive")
    return -window_s if previous else window_s


def cached_population_sums(
    session: Session, windows: Mapping[int, TimeWindow], *, max_age: timedelta
) -> dict[int, dict[str, ProbabilitySums]]:
    """Return the population sums over each window by key: corrected from the cache where it is fresh, else live.

    Sums computed live are stored for the next caller (see `try_store_baselines`),
    unless the cache already contains a later window under that key. A window with
    no answered exchange stores no row, so it is summed live on every call.
    """
    if max_age <= timedelta(0):
        return {key: population_sums(session, window) for key, window in windows.items()}
    cached, clock = load_baselines(session)
    fresh = {
        key: (cached[key], window)
        for key, window in windows.items()
        if key in cached and is_fresh(cached[key], window, clock=clock, max_age=max_age)
    }
    result = corrected_sums(session, fresh)
    computed = [compute_baseline(session, key, window) for key, window in windows.items() if key not in fresh]
    result.update({baseline.key: baseline.sums for baseline in computed})
    newer = [b for b in computed if b.key not in cached or cached[b.key].window.end <= b.window.end]
    if newer:
        try_store_baselines(session, newer)
    return result


def refresh_baselines(session: Session, window_lengths: Iterable[int], *, now: datetime) -> list[PopulationBaseline]:
    """Recompute and store the baselines of each window length ending at `now`, and of the window before each.

    The caller holds the `BASELINE_LOCK` advisory lock.
    """
    baselines = []
    for window_s in sorted(set(window_lengths)):
        length = timedelta(seconds=window_s)
        windows = {
            baseline_key(window_s): TimeWindow.ending(now, length),
            baseline_key(window_s, previous=True): TimeWindow.ending(now - length, length),
        }
        for key, window in windows.items():
            baseline = compute_baseline(session, key, window)
            store_baseline(session, baseline)
            baselines.append(baseline)
    return baselines


def load_baselines(session: Session) -> tuple[dict[int, PopulationBaseline], datetime]:
    """Load every cached baseline by key, and the database clock for judging their age."""
    query = select(PopulationBaselineRecord, func.statement_timestamp())
    with translate_errors("load the cached population sums", session):
        rows = session.execute(query).all()
        clock = rows[0][1] if rows else session.execute(select(func.statement_timestamp())).scalar_one()
    baselines: dict[int, PopulationBaseline] = {}
    for record, _ in rows:
        key = record.window_s
        if key not in baselines:
            window = TimeWindow.ending(record.window_end, timedelta(seconds=abs(key)))
            baselines[key] = PopulationBaseline(key, window, record.computed_at, {})
        baselines[key].sums[record.sentinel] = ProbabilitySums(record.count, record.total, record.total_squares)
    return baselines, clock


def compute_baseline(session: Session, key: int, window: TimeWindow) -> PopulationBaseline:
    """Sum the population over `window` and take `computed_at` from the clock after the sum's snapshot.

    An exchange ingested later than `computed_at` began its transaction after
    the aggregate's snapshot was taken, so `corrected_sums` can add it without
    counting it twice.
    """
    sums = population_sums(session, window)
    with translate_errors("read the database clock", session):
        computed_at = session.execute(select(func.clock_timestamp())).scalar_one()
    return PopulationBaseline(key, window, computed_at, sums)


def store_baseline(session: Session, baseline: PopulationBaseline) -> None:
    """Replace the cached rows of `baseline.key` with `baseline`, in the caller's transaction."""
    rows = [
        {
            "window_s": baseline.key,
            "sentinel": sentinel,
            "window_end": baseline.window.end,
            "computed_at": baseline.computed_at,
            "count": sums.count,
            "total": sums.total,
            "total_squares": sums.total_squares,
        }
        for sentinel, sums in baseline.sums.items()
    ]
    with translate_errors(f"store the population sums of key {baseline.key}", session):
        session.execute(delete(PopulationBaselineRecord).where(PopulationBaselineRecord.window_s == baseline.key))
        if rows:
            session.execute(insert(PopulationBaselineRecord), rows)


def try_store_baselines(session: Session, baselines: list[PopulationBaseline]) -> bool:
    """Store freshly computed baselines in a savepoint unless another writer has the lock, and return whether it did.

    Every reader still gets correct sums when this stores nothing: the cache
    only saves the next caller the full aggregate. A write that fails, for
    example in a read-only transaction, rolls back to the savepoint and is
    logged, and the caller's transaction goes on.
    """
    try:
        with session.begin_nested():
            if not try_advisory_xact_lock(session, BASELINE_LOCK):
                return False
            for baseline in baselines:
                store_baseline(session, baseline)
    except StorageError as exc:
        logger.warning("could not cache the population sums, so the next query recomputes them: %s", exc)
        return False
    return True


def corrected_sums(
    session: Session, requests: Mapping[int, tuple[PopulationBaseline, TimeWindow]]
) -> dict[int, dict[str, ProbabilitySums]]:
    """Correct each cached baseline to the population sums over its requested window, in one query.

    `requests` maps a key to its cached baseline and the window to sum over,
    which must have the same length as the baseline's window.
    """
    if not requests:
        return {}
    parameters: dict[str, Any] = {}
    for index, (baseline, window) in enumerate(requests.values()):
        parameters |= _correction_parameters(index, baseline, window)
    with translate_errors("correct the cached population sums", session):
        previous = session.execute(select(func.current_setting(_PARALLEL_SETTING))).scalar_one()
        # The query reads a few hundred rows, but the planner's estimate of the score
        # lookups often makes it pick a parallel plan, and starting a worker then
        # takes longer than the whole serial query.
        session.execute(select(func.set_config(_PARALLEL_SETTING, "0", True)))
        rows = session.execute(_correction_query(len(requests)), parameters).all()
        session.execute(select(func.set_config(_PARALLEL_SETTING, previous, True)))

    result = {key: dict(baseline.sums) for key, (baseline, _) in requests.items()}
    for row in rows:
        sentinel, values = row[0], row[1:]
        for index, key in enumerate(requests):
            plus = _sums(values[6 * index : 6 * index + 3])
            minus = _sums(values[6 * index + 3 : 6 * index + 6])
            if plus.count or minus.count:
                cached = result[key].get(sentinel, ProbabilitySums())
                result[key][sentinel] = _clamped(_plus(cached, plus) - minus)
    return {key: {name: sums for name, sums in sentinels.items() if sums.count > 0} for key, sentinels in result.items()}


def is_fresh(baseline: PopulationBaseline, window: TimeWindow, *, clock: datetime, max_age: timedelta) -> bool:
    """Tell whether a baseline is close enough to `window` and recent enough to be corrected instead of recomputed.

    Both limits bound the correction query: it reads the exchanges created
    between the two window ends and those ingested since `computed_at`.
    """
    if baseline.window.end - baseline.window.start != window.end - window.start:
        return False
    return abs(window.end - baseline.window.end) <= max_age and clock - baseline.computed_at <= max_age


@functools.lru_cache(maxsize=16)
def _correction_query(requests: int) -> Select[Any]:
    """Build the correction query for `requests` baselines once; the windows and times are bound parameters.

    Per request i, the rows added are those created in the window and ingested
    after `computed_at_i`, and those created in the part of the window outside
    the cached one (`entering_i`). The rows removed are those created in the
    part of the cached window outside the requested one (`leaving_i`) and
    ingested by `computed_at_i`. An empty part is bound as an empty interval.
    """
    columns: list[ColumnElement[Any]] = []
    candidates: list[ColumnElement[bool]] = []
    for index in range(requests):
        computed_at = _time_parameter("computed_at", index)
        added = or_(
            and_(_created_between("window", index), ExchangeRecord.ingested_at > computed_at),
            _created_between("entering", index),
        )
        removed = and_(_created_between("leaving", index), ExchangeRecord.ingested_at <= computed_at)
        columns += _filtered_sums(added) + _filtered_sums(removed)
        candidates += [added, removed]
    answered = and_(ExchangeRecord.outcome_kind == "answered", ~ExchangeRecord.override_trusted)
    return (
        select(ScoreRecord.sentinel, *columns)
        .join(ExchangeRecord, ScoreRecord.exchange_id == ExchangeRecord.id)
        .where(answered, or_(*candidates))
        .group_by(ScoreRecord.sentinel)
    )


def _correction_parameters(index: int, baseline: PopulationBaseline, window: TimeWindow) -> dict[str, datetime]:
    empty = TimeWindow(start=window.end, end=window.end)
    entering = _difference(window, baseline.window) or empty
    leaving = _difference(baseline.window, window) or empty
    parameters = {f"computed_at_{index}": baseline.computed_at}
    for name, part in (("window", window), ("entering", entering), ("leaving", leaving)):
        parameters[f"{name}_start_{index}"] = part.start
        parameters[f"{name}_end_{index}"] = part.end
    return parameters


def _time_parameter(name: str, index: int) -> BindParameter[datetime]:
    return bindparam(f"{name}_{index}", type_=DateTime(timezone=True))


def _created_between(name: str, index: int) -> ColumnElement[bool]:
    return and_(
        ExchangeRecord.created_at > _time_parameter(f"{name}_start", index),
        ExchangeRecord.created_at <= _time_parameter(f"{name}_end", index),
    )


def _filtered_sums(condition: ColumnElement[bool]) -> list[ColumnElement[Any]]:
    prob = ScoreRecord.prob
    return [
        func.count().filter(condition),
        func.coalesce(func.sum(prob).filter(condition), 0.0),
        func.coalesce(func.sum(prob * prob).filter(condition), 0.0),
    ]


def _difference(first: TimeWindow, second: TimeWindow) -> TimeWindow | None:
    """Return the part of `first` outside `second`, for two windows of the same length, or None when there is none."""
    if first.end <= second.start or first.start >= second.end:
        return first
    if first.end > second.end:
        return TimeWindow(start=second.end, end=first.end)
    if first.start < second.start:
        return TimeWindow(start=first.start, end=second.start)
    return None


def _sums(values: Sequence[Any]) -> ProbabilitySums:
    return ProbabilitySums(int(values[0]), float(values[1]), float(values[2]))


def _plus(first: ProbabilitySums, second: ProbabilitySums) -> ProbabilitySums:
    return ProbabilitySums(
        first.count + second.count, first.total + second.total, first.total_squares + second.total_squares
    )


def _clamped(sums: ProbabilitySums) -> ProbabilitySums:
    # Rows deleted since the baseline was computed, or rounding, can take a sum below zero.
    return ProbabilitySums(max(0, sums.count), max(0.0, sums.total), max(0.0, sums.total_squares))
