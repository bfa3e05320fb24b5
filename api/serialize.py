"""Job rows to the public job object, with the live parts (progress, queue position)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from flask import request, url_for
from sqlalchemy.orm import Session

from api import signing
from api.services import services
from daikon.contract import (
    ErrorDetail,
    ImageOut,
    JobOut,
    JobParams,
    JobStatus,
    JobUrls,
    Progress,
    WebhookEvent,
)
from db import jobs
from db.models import Job, JobImage


def _absolute(path: str) -> str:
    base = services().settings.public_url.rstrip("/") or request.host_url.rstrip("/")
    return base + path


def image_url(job: Job, image: JobImage) -> str:
    svc = services()
    direct = svc.store.presigned_url(image.storage_key)
    if direct:
        return direct
    expires, sig = signing.sign(svc.signing_key, job.id, image.rank, svc.settings.presign_seconds)
    path = url_for("jobs.get_image", job_id=job.id, rank=image.rank, expires=expires, sig=sig)
    return _absolute(path)


def job_outs(session: Session, rows: Sequence[Job]) -> list[JobOut]:
    """Serialise several jobs with one Redis round trip for their progress."""
    live = services().live.progress(j.id for j in rows if j.status is JobStatus.running)
    return [_job_out(session, job, live.get(job.id)) for job in rows]


def job_out(session: Session, job: Job) -> JobOut:
    return job_outs(session, [job])[0]


def _job_out(session: Session, job: Job, step: tuple[int, int] | None) -> JobOut:
    progress = None
    if job.status is JobStatus.running:
        done, total = step or (0, job.params["steps"])
        progress = Progress(step=done, total=total, fraction=round(done / max(total, 1), 4))
    position = None
    if job.status is JobStatus.queued:
        position = jobs.queue_position(session=session, job=job)
    return JobOut(
        id=job.id,
        status=job.status,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        # The base seed the worker used, when the client let it choose (0 is a seed too).
        params=JobParams.model_validate(
            {**job.params, "seed": job.seed if job.seed is not None else job.params["seed"]}
        ),
        priority=job.priority,
        metadata=job.client_metadata,
        webhook_url=job.webhook_url,
        webhook_events=[WebhookEvent(e) for e in job.webhook_events or []],
        images=[
            ImageOut(
                rank=img.rank,
                clip_score=img.clip_score,
                seed=img.seed,
                width=img.width,
                height=img.height,
                content_type=img.content_type,
                url=image_url(job, img),
            )
            for img in job.images
        ],
        error=(
            ErrorDetail(code=job.error_code, message=job.error_message or "")
            if job.error_code
            else None
        ),
        metrics={k: round(float(v), 4) for k, v in (job.metrics or {}).items()},
        progress=progress,
        queue_position=position,
        urls=JobUrls(
            get=_absolute(url_for("jobs.get_job", job_id=job.id)),
            cancel=_absolute(url_for("jobs.cancel_job", job_id=job.id)),
            events=_absolute(url_for("events.job_events", job_id=job.id)),
        ),
    )


def etag(out: JobOut) -> str:
    """Changes exactly when what a poller cares about changes (not with URL signatures)."""
    progress = out.progress.step if out.progress else ""
    state = f"{out.id}|{out.status}|{out.finished_at}|{progress}|{out.queue_position}"
    return hashlib.sha256(state.encode()).hexdigest()[:32]
