"""Index exchanges by creation time alone.

The consistency report reads the newest exchanges of every user; without an
index that starts with `created_at`, PostgreSQL reads the whole table. The
index is built in the migration's transaction, which blocks writes to
`exchanges` while it builds; on a large table, build it beforehand with
`CREATE INDEX CONCURRENTLY ix_exchanges_created_at ON exchanges (created_at)`
and this migration then finds it and does nothing.

Revision ID: 0003
Revises: 0002
Created: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS ix_exchanges_created_at ON exchanges (created_at)")


def downgrade() -> None:
    op.drop_index("ix_exchanges_created_at", table_name="exchanges")
