"""Watermarks of incremental jobs, and the users whose exchanges arrived after one.

A watermark is a time on the database's clock: the job has processed every
exchange ingested before it. `exchanges.ingested_at` is the start of the
transaction that stored the exchange, so a batch whose transaction started
before the watermark but committed after it carries an earlier time. Readers
therefore look back `overlap` before the watermark; processing an exchange
twice is harmless because the jobs are idempotent.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from storage.errors import translate_errors
from storage.models import ExchangeRecord, JobWatermarkRecord


def read_watermark(session: Session, job: str) -> datetime | None:
    """Return the job's watermark, or None before its first run."""
    query = select(JobWatermarkRecord.watermark).where(JobWatermarkRecord.job == job)
    with translate_errors(f"read the watermark of job {job}", session):
        return session.scalar(query)


def save_watermark(session: Session, job: str, watermark: datetime) -> None:
    """Store the job's watermark; it never moves back."""
    statement = insert(JobWatermarkRecord).values(job=job, watermark=watermark, updated_at=func.now())
    statement = statement.on_conflict_do_update(
        index_elements=[JobWatermarkRecord.job],
        set_={"watermark": func.greatest(JobWatermarkRecord.watermark, statement.excluded.watermark), "updated_at": func.now()},
    )
    with translate_errors(f"save the watermark of job {job}", session):
        session.execute(statement)


def database_now(session: Session) -> datetime:
    """Return the start time of the current transaction on the database's clock."""
    with translate_errors("read the database clock", session):
        return session.execute(select(func.now())).scalar_one()


def users_ingested_since(session: Session, since: datetime, *, overlap: timedelta) -> list[str]:
    """Return the users with an exchange ingested after `since - overlap`."""
    query = select(ExchangeRecord.user_id).where(ExchangeRecord.ingested_at > since - overlap).distinct()
    with translate_errors("list users with new exchanges", session):
        return list(session.scalars(query))
