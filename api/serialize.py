"""Job rows to the public job object, with the live parts (progress, queue position). The
object itself is built by server.job_view, which the worker shares for webhooks."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from flask import current_app, request
from pydantic import BaseModel
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from api.caches import Finished
from api.services import Services, services
from daikon.contract import JobOut, JobStatus
from daikon.errors import NotFound
from db import jobs
from db.deliveries import Outbox
from db.models import Job, JobImage
from server.job_view import EventRenderer, Links, job_object
from server.webhooks import TASK_DELIVER


def links(svc: Services | None = None) -> Links:
    """URLs as this request reaches the API (DAIKON_PUBLIC_URL first)."""
    svc = svc or services()
    base = svc.settings.services.public_url.rstrip("/") or request.host_url.rstrip("/")
    return Links(
        base + request.script_root, svc.store, svc.signing_key, svc.settings.storage.presign_seconds
    )


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
    """Serialise several jobs with one Redis round trip for their progress and one query for
    their queue positions."""
    svc = services()
    live = svc.live.progress(j.id for j in rows if j.status is JobStatus.running)
    queued = [j.id for j in rows if j.status is JobStatus.queued]
    positions = jobs.queue_positions(session=session, job_ids=queued) if queued else {}
    where = links(svc)
    return [
        job_object(job, where, step=live.get(job.id), queue_position=positions.get(job.id))
        for job in rows
    ]


def job_out(session: Session, job: Job) -> JobOut:
    return job_outs(session, [job])[0]


def etag_of(
    job_id: str,
    status: JobStatus,
    finished_at: datetime | None,
    step: int | None,
    queue_position: int | None,
) -> str:
    """Changes exactly when what a poller cares about changes (not with URL signatures)."""
    progress = "" if step is None else step
    state = f"{job_id}|{status}|{finished_at}|{progress}|{queue_position}"
    return hashlib.sha256(state.encode()).hexdigest()[:32]


def etag(out: JobOut) -> str:
    return etag_of(
        out.id,
        out.status,
        out.finished_at,
        out.progress.step if out.progress else None,
        out.queue_position,
    )


@dataclass(frozen=True)
class Polled:
    """A job as a poll sees it before any body is built: its state, live step and ETag."""

    state: jobs.PollState
    step: tuple[int, int] | None  # a running job's live (done, total), if Redis has it

    @property
    def etag(self) -> str:
        s = self.state
        shown = (self.step[0] if self.step else 0) if s.status is JobStatus.running else None
        return etag_of(s.id, s.status, s.finished_at, shown, s.queue_position)

    @property
    def version(self) -> tuple[object, ...]:
        """Equal exactly when the body would be equal (every row write moves updated_at)."""
        s = self.state
        return (s.status, s.updated_at, self.step, s.queue_position)


def polled(svc: Services, states: Sequence[jobs.PollState]) -> list[Polled]:
    live = svc.live.progress(s.id for s in states if s.status is JobStatus.running)
    return [Polled(s, live.get(s.id)) for s in states]


def bodies(conn: Connection, svc: Services, items: Sequence[Polled]) -> list[tuple[bytes, str]]:
    """The job objects as JSON bytes, each with its ETag: from the body cache while the row
    is unchanged, the others built from whole rows read in one query (their ETag then from
    what was built, should the row have moved on since its state was read)."""
    where = links(svc)
    out: list[tuple[bytes, str] | None] = []
    for p in items:
        hit = svc.bodies.get((p.state.id, where.base), p.version)
        out.append((hit, p.etag) if hit is not None else None)
    missing = [p for p, done in zip(items, out, strict=True) if done is None]
    if not missing:
        return [done for done in out if done is not None]
    with Session(bind=conn, expire_on_commit=False) as session:
        rows = jobs.get_many(session=session, job_ids=[p.state.id for p in missing])
    built: dict[str, tuple[bytes, str]] = {}
    for p in missing:
        row = rows.get(p.state.id)
        if row is None:  # deleted since its state was read
            raise NotFound(f"job {p.state.id!r} not found", param="id")
        obj = job_object(row, where, step=p.step, queue_position=p.state.queue_position)
        body = json_bytes(obj)
        tag = etag(obj)
        if row.updated_at == p.state.updated_at and row.status is p.state.status:
            svc.bodies.put((p.state.id, where.base), p.version, body)
        if row.status.terminal:
            svc.bodies.put_finished((row.id, where.base), Finished(row.tenant_id, tag, body))
        built[p.state.id] = (body, tag)
    return [
        done if done is not None else built[p.state.id] for p, done in zip(items, out, strict=True)
    ]


def finished(svc: Services, job_id: str, tenant_id: str) -> Finished | None:
    """A finished job's answer when this process built it lately (no read needed)."""
    hit = svc.bodies.finished((job_id, links(svc).base))
    return hit if hit is not None and hit.tenant_id == tenant_id else None


def json_bytes(out: BaseModel) -> bytes:
    """As Flask would send the model's JSON (its provider's settings), without the newline."""
    text: str = current_app.json.dumps(out.model_dump(mode="json"), separators=(",", ":"))
    return text.encode()
