"""Several schedulers against one database: the check that a scheduled job runs once per tick."""

from __future__ import annotations

import time

from sqlalchemy.orm import Session, sessionmaker

from monitor.jobs.scheduler import JobCounters, build_scheduler
from monitor.settings import Settings
from storage.job_runs import list_job_runs

DEADLINE_S = 20.0


def assert_each_tick_runs_once(
    session_factory: sessionmaker[Session],
    settings: Settings,
    job: str,
    *,
    stagger_s: float = 0.0,
    every_tick_ran: bool = True,
) -> None:
    """Start three schedulers, wait for twelve runs of `job` in all, and check that no tick ran twice.

    `stagger_s` starts the replicas apart, so that their timers fire at
    different points of each tick and a later one finds the tick finished,
    not only the lock taken. With `every_tick_ran`, every tick that some
    replica reached must also have an `ok` run.
    """
    counters = [JobCounters() for _ in range(3)]
    schedulers = [build_scheduler(settings, session_factory, counters=counter) for counter in counters]
    for scheduler in schedulers:
        scheduler.start()
        time.sleep(stagger_s)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while sum(counter.get("runs", job) for counter in counters) < 12:
            assert time.monotonic() < deadline, f"timed out after {DEADLINE_S} s waiting for twelve runs of {job}"
            time.sleep(0.05)
    finally:
        for scheduler in schedulers:
            scheduler.shutdown(wait=True)

    with session_factory() as session:
        runs = list_job_runs(session, job, limit=1000)
    assert all(counter.get("failures", job) == 0 for counter in counters)
    assert len(runs) == sum(counter.get("runs", job) for counter in counters)
    ok_ticks = [run.detail["tick"] for run in runs if run.status == "ok"]
    assert len(ok_ticks) == len(set(ok_ticks)), f"a tick ran more than once: {sorted(ok_ticks)}"
    assert len(ok_ticks) >= 2
    assert any(run.status == "skipped" for run in runs)
    if every_tick_ran:
        all_ticks = {run.detail["tick"] for run in runs}
        assert all_ticks == set(ok_ticks), "every tick that some replica reached ran once"
