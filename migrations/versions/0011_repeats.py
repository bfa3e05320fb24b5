"""repeats: a succeeded job's repeat key (what an identical later job shares with it, indexed
for the lookup) and, on a job answered with an earlier one's images, that job's id

Jobs that succeeded before this revision have no key: nothing is ever reused from them.

Revision ID: 0011_repeats
Revises: 0010_session_key
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_repeats"
down_revision: str | None = "0010_session_key"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("repeat_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("reused_from", sa.String(36), nullable=True))
        batch.create_index("ix_jobs_repeat_key", ["repeat_key"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_repeat_key")
        batch.drop_column("reused_from")
        batch.drop_column("repeat_key")
