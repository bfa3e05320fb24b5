"""Celery tasks: thin wrappers that hand the job id to the executor."""

from __future__ import annotations

from celery import shared_task

from daikon.contract import TASK_GENERATE
from worker import context


@shared_task(name=TASK_GENERATE, ignore_result=True)
def generate_job(job_id: str) -> str:
    return context.executor().run(job_id).value
