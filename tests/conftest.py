"""Real services for the suite: PostgreSQL (a fresh database per run), SQLite, Redis (the
machine's, else an embedded valkey), S3 over HTTP (moto's server), and the tiny models."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session

from api import create_app
from db.session import make_engine
from server.settings import Settings, normalize_database_url
from tests.apps import authed
from tests.stack import ADMIN_KEY, a_redis, free_port, migrate

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}

POSTGRES_ADMIN_URL = normalize_database_url(
    os.environ.get("DAIKON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
)

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may download


# --- Redis ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with a_redis() as url:
        yield url


@pytest.fixture
def queue_name(redis_url: str) -> Iterator[str]:
    """A queue of the test's own, so runs and tests never consume each other's messages."""
    name = f"daikon-test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{name}*"):  # the model and priority lists under it
        client.delete(key)


@pytest.fixture
def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """The admin's client for the module's `app` fixture."""
    return authed(app)


@pytest.fixture
def make_app(tmp_path: Path, redis_url: str, queue_name: str):  # type: ignore[no-untyped-def]
    """Build an API app on a fresh SQLite file and the real Redis (no worker)."""

    def build(**overrides: object) -> Flask:
        values: dict[str, object] = {
            "data_dir": tmp_path,
            "database_url": f"sqlite:///{tmp_path / 'api.db'}",
            "redis_url": redis_url,
            "queue": queue_name,
            "admin_key": ADMIN_KEY,
        }
        settings = Settings(**{**values, **overrides})  # type: ignore[arg-type]
        migrate(settings.sqlalchemy_url)
        return create_app(settings)

    return build


# --- databases ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A new database for this run on the machine's PostgreSQL, dropped afterwards."""
    name = f"daikon_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'daikon.db'}"


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def db_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A migrated engine per backend; tests using it run once on each."""
    url = request.getfixturevalue(f"{request.param}_url")
    migrate(url)
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        # pysqlite's own transaction handling breaks SAVEPOINT; let SQLAlchemy drive it.
        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn, _rec):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN")

    yield engine
    engine.dispose()


@pytest.fixture
def session(db_engine: Engine) -> Iterator[Session]:
    """A session inside an outer transaction that is rolled back after the test."""
    conn = db_engine.connect()
    outer = conn.begin()
    s = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield s
    finally:
        s.close()
        outer.rollback()
        conn.close()


# --- S3 over HTTP ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 in server mode on a real port; boto3 talks to it as to MinIO or AWS."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


# --- models ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The shipped builder's tiny pipeline and CLIP, built fresh for this run (~5 s)."""
    from tests.tiny_models import ensure_tiny_models

    return ensure_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_janus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Janus token model and its processor, saved to a folder (~1 MB)."""
    from tests.tiny_models import build_tiny_janus

    return build_tiny_janus(tmp_path_factory.mktemp("janus"))


@pytest.fixture(scope="session")
def load_tiny_janus(tiny_janus: Path):  # type: ignore[no-untyped-def]
    """Load the tiny Janus as a worker does, `images_per_call` rows per generate call, on one
    torch thread (tiny ops on a shared 2-core machine: more threads only thrash)."""
    import torch

    from worker.autoregressive import TokenGenerator
    from worker.runtime import load_generator

    torch.set_num_threads(1)

    def load(images_per_call: int) -> TokenGenerator:
        generator = load_generator(
            str(tiny_janus), model="tokens", device="cpu", images_per_call=images_per_call
        )
        assert isinstance(generator, TokenGenerator)
        return generator

    return load
