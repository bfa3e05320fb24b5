"""Job rows to the public job object, with the live parts (progress, queue position). The
object itself is built by daikon.job_view, which the worker shares for webhooks."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from flask import request
from sqlalchemy.orm import Session

from api.services import Services, services
from daikon.contract import JobOut, JobStatus
from daikon.job_view import EventRenderer, Links, job_object
from daikon.webhooks import TASK_DELIVER
from db import jobs
from db.deliveries import Outbox
from db.models import Job, JobImage


def links(svc: Services | None = None) -> Links:
    """URLs as this request reaches the API (DAIKON_PUBLIC_URL first)."""
    svc = svc or services()
    base = svc.settings.services.public_url.rstrip("/") or request.host_url.rstrip("/")
    return Links(base + request.script_root, svc.store, svc.signing_key,
                 svc.settings.storage.presign_seconds)  # fmt: skip


def outbox(svc: Services | None = None) -> Outbox:
    """Webhook events the API raises (cancel), with job objects as this request sees them,
    published by task name to the webhook queue."""
    svc = svc or services()
    queue = svc.settings.webhooks.webhook_queue
    return Outbox(
        EventRenderer(links(svc)),
        lambda d: svc.celery.send_task(TASK_DELIVER, args=[d], queue=queue),
    )


def image_url(job: Job, image: JobImage) -> str:
    """One image's URL as this request reaches the API."""
    return links().image_url(job, image)


def job_outs(session: Session, rows: Sequence[Job]) -> list[JobOut]:
    """Serialise several jobs with one Redis round trip for their progress."""
    svc = services()
    live = svc.live.progress(j.id for j in rows if j.status is JobStatus.running)
    where = links(svc)
    return [
        job_object(
            job,
            where,
            step=live.get(job.id),
            queue_position=(
                jobs.queue_position(session=session, job=job)
                if job.status is JobStatus.queued
                else None
            ),
        )
        for job in rows
    ]


def job_out(session: Session, job: Job) -> JobOut:
    return job_outs(session, [job])[0]


def etag(out: JobOut) -> str:
    """Changes exactly when what a poller cares about changes (not with URL signatures)."""
    progress = out.progress.step if out.progress else ""
    state = f"{out.id}|{out.status}|{out.finished_at}|{progress}|{out.queue_position}"
    return hashlib.sha256(state.encode()).hexdigest()[:32]
