"""Job rows to the public job object."""

from __future__ import annotations

from flask import request, url_for

from api.services import services
from daikon.contract import ErrorDetail, ImageOut, JobOut, JobParams
from db.models import Job, JobImage


def image_url(job: Job, image: JobImage) -> str:
    svc = services()
    direct = svc.store.presigned_url(image.storage_key)
    if direct:
        return direct
    path = url_for("jobs.get_image", job_id=job.id, rank=image.rank)
    base = svc.settings.public_url.rstrip("/") or request.host_url.rstrip("/")
    return base + path


def job_out(job: Job) -> JobOut:
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
    )
