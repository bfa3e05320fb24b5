"""Worker entrypoint (nothing imports this module): `celery -A worker.main worker`.

torch is not imported here: the parent process stays light and models load in each pool
process after the fork (CUDA cannot survive a fork), or in the main process for `--pool solo`,
which is how one process per GPU is run in production.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_process_init, worker_ready

from daikon.celery_config import make_celery
from worker import context
from worker.runtime import get_runtime

log = logging.getLogger("daikon.worker")

app = make_celery(context.settings(), main="daikon-worker")
# A pool child that is still loading models must not be killed for being slow to start.
app.conf.worker_proc_alive_timeout = 600
app.conf.include = ["worker.tasks"]


def _preload() -> None:
    try:
        context.executor()
        get_runtime(context.settings())
    except Exception:  # the first job will retry the load and fail with the reason
        log.exception("model preload failed")


@worker_process_init.connect
def _preload_in_child(**_: Any) -> None:
    _preload()


@worker_ready.connect
def _preload_solo(sender: Any = None, **_: Any) -> None:
    pool = getattr(sender, "pool_cls", None)
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if "solo" in str(name):
        _preload()
