"""session key: each dashboard session records a fingerprint of the key it was opened with
(an HMAC, never the key), so it ends when that key changes; and its one pending notice

Sessions opened before this revision have no fingerprint: they are deleted (their holders
sign in again once).

Revision ID: 0010_session_key
Revises: 0009_retention
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_session_key"
down_revision: str | None = "0009_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(sa.text("DELETE FROM dashboard_sessions"))
    with op.batch_alter_table("dashboard_sessions") as batch:
        batch.add_column(sa.Column("key_fingerprint", sa.String(64), nullable=False))
        batch.add_column(sa.Column("notice", sa.String(512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dashboard_sessions") as batch:
        batch.drop_column("notice")
        batch.drop_column("key_fingerprint")
