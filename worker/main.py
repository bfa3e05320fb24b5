"""Worker entrypoint (nothing imports this module): `celery -A worker.main worker`.

torch is not imported here: the parent process stays light and models load in each pool
process after the fork (CUDA cannot survive a fork), or in the main process for `--pool solo`,
which is how one process per GPU is run in production.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from celery.signals import celeryd_init, worker_process_init, worker_ready, worker_shutdown
from kombu import Queue

from db.session import make_engine, make_session_factory
from server import heartbeats, live
from server.celery_config import make_celery
from worker import context, runtime
from worker.heartbeat import Heartbeat
from worker.runtime import get_runtime
from worker.sweeper import Sweeper

log = logging.getLogger("daikon.worker")

settings = context.settings()
app = make_celery(settings, main="daikon-worker")
# A pool child that is still loading models must not be killed for being slow to start.
app.conf.worker_proc_alive_timeout = 600
app.conf.include = ["worker.tasks"]
# Consume exactly the queues of the models this worker serves (DAIKON_WORKER_MODELS): a job
# for a model no worker serves waits, visibly queued, instead of failing on the wrong worker.
app.conf.task_queues = [Queue(settings.queue_for(m)) for m in settings.served_models]


@celeryd_init.connect
def _name_the_node(sender: Any = None, **_: Any) -> None:
    # Before the pool forks: every child knows which worker it loads models for.
    runtime.node_name = str(sender or socket.gethostname())


def _preload() -> None:
    context.executor()
    preloaded: list[str] = []
    for model in settings.served_models:
        try:
            get_runtime(settings, model)
        except Exception:  # the first job will retry the load and fail with the reason
            log.exception("preload of model %s failed", model)
            continue
        preloaded.append(model)
        if set(preloaded) - set(runtime.loaded_models()):  # the memory budget is full
            break


@worker_process_init.connect
def _preload_in_child(**_: Any) -> None:
    _preload()


@worker_ready.connect
def _preload_solo(sender: Any = None, **_: Any) -> None:
    # The sender is the Consumer; its WorkController knows the pool. Only the solo pool runs
    # jobs in this (main) process, so only then is this the process to load models into.
    pool = getattr(getattr(sender, "controller", None), "pool_cls", None)
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if "solo" in str(name):
        _preload()


_heartbeat: Heartbeat | None = None


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    """Announce this worker (the main process) so the API can list who serves which model."""
    global _heartbeat
    consumer = getattr(sender, "task_consumer", None)  # what it really consumes, -Q included
    queues = consumer.queues if consumer is not None else app.conf.task_queues
    client = live.client(settings.services.redis_url)
    hostname = str(getattr(sender, "hostname", "") or socket.gethostname())
    _heartbeat = Heartbeat(
        client,
        hostname=hostname,
        models=settings.served_models,
        queues=sorted(q.name for q in queues),
        failed=lambda: heartbeats.load_errors(
            client, settings, hostname=hostname, models=settings.served_models
        ),
        queue_of=settings.queue_for,
    )
    _heartbeat.start()


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
    if _sweeper is not None:
        _sweeper.stop()


_sweeper: Sweeper | None = None


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    global _sweeper
    _sweeper = Sweeper(app, settings, make_session_factory(make_engine(settings.sqlalchemy_url)))
    _sweeper.start()
