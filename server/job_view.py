"""A job row as the public job object, without Flask: the API answers with it and the worker
writes it into webhooks, so a receiver gets exactly what `GET /v1/jobs/{id}` returns.

The row is described by its shape (JobRow), not imported from db/: the contract depends on no
storage layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from daikon.contract import (
    ErrorDetail,
    ImageOut,
    InputOut,
    JobOut,
    JobParams,
    JobStatus,
    JobUrls,
    Progress,
    WebhookEvent,
)
from daikon.webhooks import payload
from server import image_urls
from server.settings import Settings
from server.storage import ImageStore


class ImageRow(Protocol):
    rank: int
    clip_score: float
    seed: int
    width: int
    height: int
    content_type: str
    storage_key: str


class JobRow(Protocol):
    """What a stored job offers (db.models.Job)."""

    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: dict[str, Any]
    seed: int | None
    priority: int
    client_metadata: dict[str, Any] | None
    webhook_url: str | None
    webhook_events: list[str]
    error_code: str | None
    error_message: str | None
    metrics: dict[str, Any]
    inputs: dict[str, Any] | None
    reused_from: str | None

    @property
    def images(self) -> Sequence[ImageRow]: ...


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
        return cls(
            settings.services.public_url.rstrip("/"),
            store,
            signing_key,
            settings.storage.presign_seconds,
        )

    def absolute(self, path: str) -> str:
        return self.base + path

    def image_url(self, job: JobRow, image: ImageRow) -> str:
        direct = self.store.presigned_url(image.storage_key)
        if direct:
            return direct
        expires, sig = image_urls.sign(self.signing_key, job.id, image.rank, self.presign_seconds)
        return self.absolute(
            f"/v1/jobs/{job.id}/images/{image.rank}?expires={expires}"
            f"&{image_urls.SIGNATURE_PARAM}={sig}"
        )

    def input_url(self, job: JobRow, role: str, key: str) -> str:
        direct = self.store.presigned_url(key)
        if direct:
            return direct
        expires, sig = image_urls.sign(
            self.signing_key, job.id, f"input-{role}", self.presign_seconds
        )
        return self.absolute(
            f"/v1/jobs/{job.id}/inputs/{role}?expires={expires}&{image_urls.SIGNATURE_PARAM}={sig}"
        )


def job_object(
    job: JobRow,
    links: Links,
    *,
    step: tuple[int, int] | None = None,
    queue_position: int | None = None,
) -> JobOut:
    """`step` is the live (done, total) of a running job; without it a running job shows 0 of
    its steps (0 of 0 while a worker that just claimed it has not yet filled in the model's
    default steps)."""
    progress = None
    if job.status is JobStatus.running:
        done, total = step or (0, job.params.get("steps") or 0)
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
                id=f"{job.id}:{img.rank}",
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
        inputs=[
            InputOut(
                id=f"{job.id}:{role}",
                role=role,
                width=record["width"],
                height=record["height"],
                content_type=record["content_type"],
                url=links.input_url(job, role, record["key"]),
            )
            for role, record in (job.inputs or {}).items()
        ],
        error=(
            ErrorDetail(code=job.error_code, message=job.error_message or "")
            if job.error_code
            else None
        ),
        metrics={k: round(float(v), 4) for k, v in (job.metrics or {}).items()},
        reused_from=job.reused_from,
        progress=progress,
        queue_position=queue_position if job.status is JobStatus.queued else None,
        urls=JobUrls(
            get=links.absolute(path),
            cancel=links.absolute(f"{path}/cancel"),
            events=links.absolute(f"{path}/events"),
        ),
    )


def event_time(job: JobRow, event: WebhookEvent) -> datetime:
    """When the event happened, as the job records it (the payload's `timestamp`)."""
    if event is WebhookEvent.started and job.started_at is not None:
        return job.started_at
    if event is not WebhookEvent.progress and job.finished_at is not None:
        return job.finished_at
    return datetime.now(UTC)


@dataclass(frozen=True)
class EventRenderer:
    """A webhook event's body: the job object as it now stands, frozen once (every attempt
    sends these exact bytes)."""

    links: Links

    def __call__(
        self,
        job: JobRow,
        event: WebhookEvent,
        at: datetime | None = None,
        step: tuple[int, int] | None = None,
    ) -> str:
        return payload.render(
            event, at or event_time(job, event), job_object(job, self.links, step=step)
        )
