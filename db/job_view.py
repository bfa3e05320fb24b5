"""A job row as the public job object, without Flask: the API answers with it and the worker
writes it into webhooks, so a receiver gets exactly what `GET /v1/jobs/{id}` returns."""

from __future__ import annotations

from dataclasses import dataclass

from daikon import image_urls
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
from daikon.settings import Settings
from daikon.storage import ImageStore
from db.models import Job, JobImage


@dataclass(frozen=True)
class Links:
    """Where a job's URLs point. `base` is the API's public root (DAIKON_PUBLIC_URL, or the
    request's host in the API); empty gives paths relative to the API."""

    base: str
    store: ImageStore
    signing_key: bytes
    presign_seconds: int

    @classmethod
    def from_settings(cls, settings: Settings, store: ImageStore, signing_key: bytes) -> Links:
        return cls(settings.public_url.rstrip("/"), store, signing_key, settings.presign_seconds)

    def absolute(self, path: str) -> str:
        return self.base + path

    def image_url(self, job: Job, image: JobImage) -> str:
        direct = self.store.presigned_url(image.storage_key)
        if direct:
            return direct
        expires, sig = image_urls.sign(self.signing_key, job.id, image.rank, self.presign_seconds)
        return self.absolute(f"/v1/jobs/{job.id}/images/{image.rank}?expires={expires}&sig={sig}")


def job_object(
    job: Job,
    links: Links,
    *,
    step: tuple[int, int] | None = None,
    queue_position: int | None = None,
) -> JobOut:
    """`step` is the live (done, total) of a running job; without it a running job shows 0."""
    progress = None
    if job.status is JobStatus.running:
        done, total = step or (0, job.params["steps"])
        progress = Progress(step=done, total=total, fraction=round(done / max(total, 1), 4))
    path = f"/v1/jobs/{job.id}"
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
                url=links.image_url(job, img),
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
        queue_position=queue_position if job.status is JobStatus.queued else None,
        urls=JobUrls(
            get=links.absolute(path),
            cancel=links.absolute(f"{path}/cancel"),
            events=links.absolute(f"{path}/events"),
        ),
    )
