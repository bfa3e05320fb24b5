"""Webhook worker entrypoint (nothing imports this module):

    celery -A worker.webhooks.main worker --pool threads --concurrency 8 --queues daikon.webhooks

Deliveries wait on the network, not on a GPU: threads carry them, in a process of their own
that loads no model, so a slow receiver never holds up generation. Threads are shared by every
tenant: the gates (worker/webhooks/gate.py, state in Redis, shared by every such worker) cap
the attempts in flight per endpoint and per tenant and back off dead endpoints, so one
tenant's hanging receivers hold at most its share. Each such worker also runs the dispatcher
that publishes due retries from the database.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready, worker_shutdown
from kombu import Queue

from server.celery_config import make_celery
from server.settings import Settings
from worker.webhooks.deliver import DispatchLoop, deliverer

settings = Settings()
app = make_celery(settings, main="daikon-webhooks")
app.conf.include = ["worker.webhooks.deliver"]
app.conf.task_queues = [Queue(settings.webhooks.webhook_queue)]
app.conf.task_default_queue = settings.webhooks.webhook_queue
# An attempt is bounded by its own timeout (the thread pool enforces no time limits).
app.conf.task_time_limit = None
app.conf.task_soft_time_limit = None

_loop: DispatchLoop | None = None


@worker_ready.connect
def _start_dispatcher(**_: Any) -> None:
    global _loop
    _loop = DispatchLoop(deliverer().dispatch, settings.webhooks.webhook_dispatch_seconds)
    _loop.start()


@worker_shutdown.connect
def _stop_dispatcher(**_: Any) -> None:
    if _loop is not None:
        _loop.stop()
