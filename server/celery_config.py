"""The one Celery configuration, shared by the API (which only publishes) and the worker.

Building a Celery object is cheap and opens no connection; the API builds one inside
`create_app`, never at import time, and publishes by task *name* so it never imports the worker.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from server.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    # Why each setting (docs/reliability.md has the guarantees they serve):
    # - task_acks_late: the message is acked only after the task returns, so a worker that dies
    #   mid-job leaves the message to be redelivered instead of losing the job.
    # - task_reject_on_worker_lost: a child killed by a signal (OOM killer, SIGKILL) is otherwise
    #   still acked; with this the message goes back to the queue.
    # - worker_prefetch_multiplier=1: a job takes seconds to minutes; prefetching more would park
    #   jobs behind a busy worker while another sits idle.
    # - visibility_timeout: Redis redelivers an unacked message after this long. The task's hard
    #   time limit is kept below it (checked in Settings) so a job that is still running is never
    #   handed to a second worker by the broker.
    # - worker_cancel_long_running_tasks_on_connection_loss: with late acks, a task whose broker
    #   connection dropped will be redelivered anyway; cancelling avoids running it twice.
    # Models are loaded after the fork (worker/main.py): CUDA is not fork-safe.
    # Priorities: one Redis list per level, consumed highest first (the Redis transport serves
    # 0 first, so a job's priority p is published as 9 - p).
    transport = {
        "visibility_timeout": settings.worker.visibility_timeout_seconds,
        "priority_steps": list(range(10)),
        "sep": ":",
        "queue_order_strategy": "priority",
    }
    return {
        "broker_url": settings.services.redis_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        "visibility_timeout": settings.worker.visibility_timeout_seconds,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_time_limit": settings.worker.job_time_limit_seconds,
        "task_soft_time_limit": soft_time_limit(settings),
        "task_ignore_result": True,  # results live in the database, not in Redis
        "task_default_queue": settings.services.queue,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }


# Celery's soft limit for a job sits this far past its allowance: the executor's own check,
# at each denoising step, fails it first; the soft limit interrupts an operation that hangs.
SOFT_LIMIT_MARGIN_SECONDS = 10.0


def soft_time_limit(settings: Settings) -> int:
    """Celery's soft limit: the job fails cleanly before the hard limit kills its process."""
    return max(settings.worker.job_time_limit_seconds - 30, 5)


def make_celery(settings: Settings, *, main: str = "daikon") -> Celery:
    app = Celery(main)
    app.conf.update(celery_config(settings))
    return app


def publish_job(
    app: Celery,
    settings: Settings,
    *,
    job_id: str,
    model: str,
    priority: int,
    allowance: float | None = None,
) -> None:
    """Publish a job's message on its model's queue at its priority. Publishing twice is
    harmless: the claim lets one message run the job and the others find nothing to do.

    `allowance` is the time the job's cost allows (daikon/limits.py), when known: the message
    then carries Celery time limits just past it (the worker's own check fails the job at the
    allowance; these catch a process that did not stop), instead of the deployment's."""
    from daikon.contract import PRIORITY_MAX, TASK_GENERATE
    from daikon.limits import HARD_LIMIT_GRACE_SECONDS

    limits: dict[str, float] = {}
    if allowance is not None:
        soft = min(allowance + SOFT_LIMIT_MARGIN_SECONDS, soft_time_limit(settings))
        limits = {
            "soft_time_limit": soft,
            "time_limit": min(
                soft + HARD_LIMIT_GRACE_SECONDS, settings.worker.job_time_limit_seconds
            ),
        }
    app.send_task(
        TASK_GENERATE,
        args=[job_id],
        queue=settings.queue_for(model),
        priority=PRIORITY_MAX - priority,  # the Redis transport serves level 0 first
        **limits,
    )
