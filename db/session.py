"""Engines and the one-session-per-unit-of-work context manager (no global session)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from server.private_files import DIR_MODE, FILE_MODE

T = TypeVar("T")


def make_engine(url: str, *, reads: bool = False, **kwargs: Any) -> Engine:
    """`reads`: an engine for read-only requests (see read_session_factory)."""
    if url.startswith("sqlite"):
        database = make_url(url).database
        on_disk = bool(database) and database != ":memory:"
        if on_disk:
            Path(str(database)).parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # API and worker are separate processes sharing one file: WAL lets readers run beside
        # the single writer, and busy_timeout waits for the write lock instead of failing.
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            if on_disk:
                # Before WAL mode: SQLite gives its -wal and -shm files the database's mode.
                # It holds secrets (webhook signing secrets, key hashes): owner only.
                os.chmod(str(database), FILE_MODE)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL syncs at checkpoints, not at every commit: a crashed API or
            # worker process loses nothing; a power cut may lose the last commits (a job then
            # runs again from its lease, docs/reliability.md). PostgreSQL is for more than that.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if reads:
        # Each statement planned for its own values: psycopg prepares a statement run five
        # times, and PostgreSQL's generic plan for a list page (db/jobs.py list_states) ranks
        # every queue instead of the page's models (10x slower with 10,000 jobs queued).
        options = {"options": "-c plan_cache_mode=force_custom_plan"}
        if make_url(url).get_backend_name() != "postgresql":
            options = {}
        return create_engine(url, isolation_level="AUTOCOMMIT", connect_args=options, **kwargs)
    return create_engine(url, pool_pre_ping=True, **kwargs)


def read_engine(url: str, writes: Engine) -> Engine:
    """The engine for requests that only read (status polls, lists), used through Core
    connections (an ORM session costs a poll more than its query). On PostgreSQL each
    statement runs on its own (autocommit: no BEGIN and COMMIT round trips) and a pooled
    connection is not pinged before use: `read_retrying` retries once on a connection the
    server dropped. On SQLite, the ordinary engine."""
    return writes if url.startswith("sqlite") else make_engine(url, reads=True)


def read_retrying(engine: Engine, read: Callable[[Connection], T]) -> T:
    """`read(connection)`; once more on a fresh connection if the first was dropped by the
    server (a restart, a failover) since it was last used. Only for reads: running one twice
    changes nothing."""
    try:
        with engine.connect() as conn:
            return read(conn)
    except DBAPIError as e:
        if not e.connection_invalidated:
            raise
    with engine.connect() as conn:
        return read(conn)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects stay readable after the scope commits (serialisation).
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Commit on success, roll back on any exception, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
