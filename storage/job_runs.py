"""Job run records, and the advisory lock that lets one replica run each tick of a job."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from storage.errors import translate_errors
from storage.models import JOB_RUN_STATUSES, JobRunRecord


def try_advisory_xact_lock(session: Session, name: str) -> bool:
    """Take the transaction-level advisory lock for `name` if it is free, and return whether it was taken.

    PostgreSQL releases the lock when the session's transaction ends. The key is
    the pair (hash of `name`, hash of the current schema), so replicas that
    share a schema exclude each other, while deployments or test runs in other
    schemas of the same database do not.
    """
    query = select(func.pg_try_advisory_xact_lock(func.hashtext(name), func.hashtext(func.current_schema())))
    with translate_errors(f"take the advisory lock for {name}", session):
        return bool(session.scalar(query))


def record_job_run(
    session: Session,
    *,
    job: str,
    started_at: datetime,
    finished_at: datetime,
    status: str,
    detail: dict[str, Any],
    error: str | None = None,
) -> int:
    """Insert one job run and return its id."""
    if status not in JOB_RUN_STATUSES:
        raise ValueError(f"invalid job run status {status!r}. Choose one of {', '.join(JOB_RUN_STATUSES)}")
    query = (
        insert(JobRunRecord)
        .values(
            job=job, started_at=started_at, finished_at=finished_at, status=status, detail=detail, error=error
        )
        .returning(JobRunRecord.id)
    )
    with translate_errors(f"record a run of job {job}", session):
        return int(session.execute(query).scalar_one())


def list_job_runs(session: Session, job: str, *, limit: int = 20) -> list[JobRunRecord]:
    """Return the latest runs of a job, newest first."""
    query = (
        select(JobRunRecord)
        .where(JobRunRecord.job == job)
        .order_by(JobRunRecord.started_at.desc(), JobRunRecord.id.desc())
        .limit(limit)
    )
    with translate_errors(f"list runs of job {job}", session):
        return list(session.scalars(query))


def tick_already_ran(session: Session, job: str, tick: str) -> bool:
    """Return whether a run of `job` for the scheduler tick `tick` finished `ok` on any replica."""
    query = (
        select(JobRunRecord.id)
        .where(JobRunRecord.job == job, JobRunRecord.status == "ok", JobRunRecord.detail["tick"].astext == tick)
        .limit(1)
    )
    with translate_errors(f"look up the runs of job {job} for tick {tick}", session):
        return session.execute(query).first() is not None
