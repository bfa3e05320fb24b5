"""What a worker process builds once: settings, DB sessions, store and the job executor."""

from __future__ import annotations

import functools
import os
import socket

from daikon.live import LiveState
from daikon.settings import Settings
from daikon.storage import make_store
from db.session import make_engine, make_session_factory
from worker.executor import JobExecutor
from worker.runtime import get_runtime


@functools.cache
def settings() -> Settings:
    return Settings()


@functools.cache
def executor() -> JobExecutor:
    s = settings()
    return JobExecutor(
        sessions=make_session_factory(make_engine(s.sqlalchemy_url)),
        store=make_store(s),
        runtime=lambda model: get_runtime(s, model),
        worker_name=f"{socket.gethostname()}:{os.getpid()}",
        key_prefix=s.s3_prefix if s.storage_backend == "s3" else "",
        live=LiveState(s.redis_url),
        stage_namespace=s.queue,
    )
