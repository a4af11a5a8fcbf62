"""Baseline job: recompute the cached population sums that per-user risk queries correct and reuse.

Each run sums the population over every risk report window and flag rule
window ending now, and over the window before each, and replaces the rows of
`population_baselines` (storage/baselines.py). Queries between runs correct
those sums with a few small index reads instead of summing a whole window.
One replica runs each tick: the others find the advisory lock taken, or the
tick already done, and record a skipped run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy.orm import Session

from storage.baselines import BASELINE_LOCK, refresh_baselines
from storage.engine import SessionFactory, transaction
from storage.job_runs import record_job_run, tick_already_ran, try_advisory_xact_lock

logger = logging.getLogger(__name__)

JOB_NAME = BASELINE_LOCK


@dataclass(frozen=True)
class BaselineJobResult:
    """Status of one run of the baseline job, and what it recomputed."""

    status: Literal["ok", "skipped"]
    tick: str | None = None
    window_end: str | None = None
    keys: tuple[int, ...] = ()
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def run_baseline_job(
    session_factory: SessionFactory,
    window_lengths: Iterable[int],
    *,
    now: datetime | None = None,
    tick_s: int | None = None,
) -> BaselineJobResult:
    """Recompute the baselines of `window_lengths` (seconds) in one transaction and record the run in `job_runs`.

    With `tick_s`, the run belongs to the tick `now` rounded down to a multiple
    of `tick_s` seconds, and is skipped when any replica already finished it.
    A failed run raises for the scheduler's guard to log; the cache then keeps
    its previous rows, and queries recompute what has grown too old.
    """
    started_at = datetime.now(timezone.utc)
    now = now or started_at
    tick = _tick(now, tick_s) if tick_s else None
    with transaction(session_factory, "run the baseline job") as session:
        result = _run_locked(session, tuple(window_lengths), now=now, tick=tick)
        record_job_run(
            session,
            job=JOB_NAME,
            started_at=started_at,
            finished_at=datetime.now(timezone.utc),
            status=result.status,
            detail=result.as_json(),
        )
    if result.status == "ok":
        logger.info("job %s: recomputed %d baselines in %.2f s", JOB_NAME, len(result.keys), result.seconds)
    else:
        logger.debug("job %s skipped: another replica has its lock or already finished tick %s", JOB_NAME, tick)
    return result


def _run_locked(session: Session, window_lengths: tuple[int, ...], *, now: datetime, tick: str | None) -> BaselineJobResult:
    # The lock keeps replicas, and queries storing a baseline on demand, from
    # writing at the same time. The tick check stops a later replica in the same tick.
    if not try_advisory_xact_lock(session, BASELINE_LOCK):
        return BaselineJobResult(status="skipped", tick=tick)
    if tick is not None and tick_already_ran(session, JOB_NAME, tick):
        return BaselineJobResult(status="skipped", tick=tick)
    started = time.perf_counter()
    baselines = refresh_baselines(session, window_lengths, now=now)
    return BaselineJobResult(
        status="ok",
        tick=tick,
        window_end=now.isoformat(),
        keys=tuple(baseline.key for baseline in baselines),
        seconds=round(time.perf_counter() - started, 3),
    )


def _tick(now: datetime, tick_s: int) -> str:
    seconds = int(now.timestamp()) // tick_s * tick_s
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()
