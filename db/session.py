"""Engines and the one-session-per-unit-of-work context manager (no global session)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from daikon.private_files import DIR_MODE, FILE_MODE


def make_engine(url: str, **kwargs: Any) -> Engine:
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
    return create_engine(url, pool_pre_ping=True, **kwargs)


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
