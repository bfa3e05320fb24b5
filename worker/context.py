"""What a worker process builds once: settings, DB sessions, store and the job executor."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable

from daikon.contract import JobParams
from db.deliveries import Outbox
from db.session import make_engine, make_session_factory
from server import image_urls
from server.celery_config import make_celery, publish_job, soft_time_limit
from server.job_view import EventRenderer, Links
from server.live import LiveState
from server.settings import Settings
from server.storage import ImageStore, key_prefix, make_store
from server.webhooks import TASK_DELIVER, TASK_PROGRESS
from worker.executor import JobExecutor
from worker.job_webhooks import JobWebhooks
from worker.runtime import get_runtime

_step_hook: Callable[[JobParams, int], None] | None = None


def install_step_hook(hook: Callable[[JobParams, int], None]) -> None:
    """Call `hook(params, step)` at every denoising step of every job of this process: for a
    test harness's worker app (the chaos suite's faults, chaos/faulty_worker.py), installed
    before the executor is first built. Production workers install none."""
    global _step_hook
    _step_hook = hook


@functools.cache
def settings() -> Settings:
    return Settings()


def job_webhooks(s: Settings, store: ImageStore) -> JobWebhooks:
    """Publishes by task name to the webhook queue: deliveries run in the webhook worker."""
    app = make_celery(s, main="daikon-worker-events")
    queue = s.webhooks.webhook_queue
    return JobWebhooks(
        outbox=Outbox(
            EventRenderer(Links.from_settings(s, store, image_urls.secret_key(s))),
            publish=lambda d: app.send_task(TASK_DELIVER, args=[d], queue=queue),
        ),
        publish_progress=lambda job_id, step, total, at: app.send_task(
            TASK_PROGRESS, args=[job_id, step, total, at], queue=queue
        ),
    )


@functools.cache
def executor() -> JobExecutor:
    s = settings()
    store = make_store(s)
    executor = JobExecutor(
        sessions=make_session_factory(make_engine(s.sqlalchemy_url)),
        store=store,
        runtime=lambda model: get_runtime(s, model),
        worker_name=f"{socket.gethostname()}:{os.getpid()}",
        settings=s,
        key_prefix=key_prefix(s),
        live=LiveState(s.services.redis_url, s.services.queue),
        webhooks=job_webhooks(s, store),
        lease_seconds=s.worker.lease_seconds,
        max_attempts=s.worker.max_attempts,
        storage_retry_seconds=s.storage.storage_retry_seconds,
        time_limit_seconds=soft_time_limit(s),
        batch_jobs=s.worker.batch_jobs,
        batch_wait_seconds=s.worker.batch_wait_ms / 1000,
    )
    app = make_celery(s, main="daikon-worker-jobs")
    executor.publish = lambda m: publish_job(
        app, s, job_id=m.job_id, model=m.model, priority=m.priority
    )
    if _step_hook is not None:
        executor.step_hook = _step_hook
    return executor
