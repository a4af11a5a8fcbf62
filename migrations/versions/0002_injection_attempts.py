"""Record injection attempts on exchanges.

Adds `exchanges.injection_attempts`, the number of sentinels found in the
user-controlled messages, and `exchanges.injection_findings`, where each was
found (sentinel, message index, role, disguises, character span).

Both columns have a constant default, so PostgreSQL 11 and later add them
without rewriting the table. The ACCESS EXCLUSIVE lock is held only briefly,
and migrations/env.py sets `lock_timeout` for the transaction, so a running
service that holds a lock on the table makes the upgrade fail instead of
queueing every other query behind it.

Revision ID: 0002
Revises: 0001
Created: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "exchanges",
        sa.Column("injection_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("exchanges", sa.Column("injection_findings", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("exchanges", "injection_findings")
    op.drop_column("exchanges", "injection_attempts")
