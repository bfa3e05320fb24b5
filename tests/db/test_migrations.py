"""Alembic creates everything the models describe, on both databases, and can go back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, make_url, text

from db.models import Base
from tests.conftest import POSTGRES_ADMIN_URL
from tests.stack import ROOT, migrate


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    name = f"daikon_mig_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_upgrade_head_leaves_no_drift_from_the_models(empty_db_url: str) -> None:
    migrate(empty_db_url)
    engine = create_engine(empty_db_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
        assert set(inspect(conn).get_table_names()) >= {"jobs", "job_images", "alembic_version"}
    engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"


def test_downgrade_to_base_removes_the_tables(empty_db_url: str) -> None:
    migrate(empty_db_url)
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", empty_db_url)
    cfg.attributes["configure_logger"] = False
    command.downgrade(cfg, "base")
    engine = create_engine(empty_db_url)
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_jobs_made_before_tenancy_survive_the_upgrade(empty_db_url: str) -> None:
    migrate(empty_db_url, "0001")
    engine = create_engine(empty_db_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, status, prompt, params, created_at, updated_at, attempts,"
                " metrics) VALUES ('old-1', 'succeeded', 'p', '{}', :t, :t, 1, '{}')"
            ),
            {"t": "2026-01-01 00:00:00+00:00"},
        )
    migrate(empty_db_url)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT model, priority, webhook_events, tenant_id FROM jobs WHERE id='old-1'")
        ).one()
    engine.dispose()
    assert (row.model, row.priority, row.tenant_id) == ("default", 5, None)
    assert row.webhook_events in ("[]", [])


def test_the_upgrade_counts_what_each_tenant_already_stores(empty_db_url: str) -> None:
    """0009 fills tenants.stored_bytes from the images and the inputs stored before it: an
    input a retry shares is counted once, on the job whose id names its folder."""
    migrate(empty_db_url, "0007_edits")
    engine = create_engine(empty_db_url)
    t = {"t": "2026-01-01 00:00:00+00:00"}
    job = (
        "INSERT INTO jobs (id, tenant_id, status, prompt, params, created_at, updated_at, "
        "attempts, metrics, model, priority, webhook_events, cost, inputs) VALUES "
        "(:id, 'ten', 'failed', 'p', '{}', :t, :t, 1, '{}', 'default', 5, '[]', 0, :inputs)"
    )
    own = '{"image": {"key": "jobs/j1/input-image.png", "byte_size": 1000}}'
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('ten', 'n', :t)"), t)
        conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('idle', 'i', :t)"), t)
        conn.execute(text(job), {**t, "id": "j1", "inputs": own})
        conn.execute(text(job), {**t, "id": "j2", "inputs": own})  # a retry: j1's input
        conn.execute(text(job), {**t, "id": "j3", "inputs": "null"})
        conn.execute(
            text(
                "INSERT INTO job_images (job_id, rank, clip_score, seed, width, height, "
                "content_type, storage_key, byte_size, created_at) VALUES "
                "('j3', 1, 0.5, 1, 8, 8, 'image/png', 'jobs/j3/rank-1.png', 250, :t)"
            ),
            t,
        )
    migrate(empty_db_url)
    with engine.connect() as conn:
        counted = dict(conn.execute(text("SELECT id, stored_bytes FROM tenants")).all())
    engine.dispose()
    assert counted == {"ten": 1250, "idle": 0}
