"""Celery tasks: thin wrappers that hand the job id to the executor.

A message is never dropped for a reason outside the job: when another live worker holds the
job, or the database cannot be reached, the task is retried later (a new message) instead of
being acked as done.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from sqlalchemy.exc import OperationalError

from daikon.contract import TASK_GENERATE
from worker import context
from worker.executor import JobBusy

log = logging.getLogger(__name__)
DB_RETRY_MAX_SECONDS = 30


@shared_task(
    name=TASK_GENERATE,
    bind=True,
    ignore_result=True,
    max_retries=None,
    # The database is down: a new message after 1, 2, 4 ... up to 30 s, never an ack.
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=DB_RETRY_MAX_SECONDS,
    retry_jitter=False,
)
def generate_job(self: Any, job_id: str) -> str:
    # Time limits of its own (daikon/celery_config.publish_job's allowance), or the deployment's.
    limited = any(limit is not None for limit in (self.request.timelimit or ()))
    try:
        return context.executor().run(job_id, limited=limited).value
    except JobBusy as busy:
        # Never run twice in parallel: look again once the holder's lease would have lapsed.
        raise self.retry(countdown=max(1.0, busy.retry_in + 1.0)) from None
