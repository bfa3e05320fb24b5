"""hardening: job cost (per-tenant queued-cost budgets), webhook secrets encrypted at rest,
webhook attempts keep the answer's length

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("cost", sa.Float(), nullable=False, server_default="0"))
        batch.create_index("ix_jobs_tenant_id_status_model", ["tenant_id", "status", "model"])
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.String),
        sa.column("params", sa.JSON),
        sa.column("cost", sa.Float),
    )
    conn = op.get_bind()
    for job_id, params in conn.execute(sa.select(jobs.c.id, jobs.c.params)).all():
        p = json.loads(params) if isinstance(params, str) else params
        sides = [p.get(k) for k in ("width", "height", "candidates", "steps")]
        if not all(isinstance(x, int) for x in sides):
            continue  # a row older than complete params: it costs nothing now
        cost = sides[0] * sides[1] * sides[2] * sides[3] / 1e6
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(cost=cost))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("cost", server_default=None)
    # Encrypted values are longer than a bare secret. Rows stored in clear stay readable and
    # are encrypted when next read (or by `python -m db.maintenance rotate-encryption-key`).
    with op.batch_alter_table("webhook_secrets") as batch:
        batch.alter_column("secret", type_=sa.Text(), existing_type=sa.String(length=64))
    with op.batch_alter_table("webhook_attempts") as batch:
        batch.add_column(sa.Column("response_bytes", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_attempts") as batch:
        batch.drop_column("response_bytes")
    # Code before 0005 signs with the stored value as it is: decrypt with this deployment's keys.
    secrets = sa.table("webhook_secrets", sa.column("id", sa.String), sa.column("secret", sa.Text))
    conn = op.get_bind()
    rows = conn.execute(sa.select(secrets.c.id, secrets.c.secret)).all()
    if rows:
        from server.encryption import cipher
        from server.settings import Settings

        plain = cipher(Settings())
        for secret_id, stored in rows:
            conn.execute(
                sa.update(secrets)
                .where(secrets.c.id == secret_id)
                .values(secret=plain.decrypt(stored))
            )
    with op.batch_alter_table("webhook_secrets") as batch:
        batch.alter_column("secret", type_=sa.String(length=64), existing_type=sa.Text())
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_tenant_id_status_model")
        batch.drop_column("cost")
