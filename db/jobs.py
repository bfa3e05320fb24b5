"""Job service functions. State changes are conditional UPDATEs so concurrent workers and
redelivered messages can never move a job backwards or finish it twice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from daikon.contract import DEFAULT_PRIORITY, JobParams, JobStatus
from daikon.errors import NotFound
from db.models import Job, JobImage, utcnow

ACTIVE = (JobStatus.queued, JobStatus.running)


@dataclass(frozen=True)
class NewImage:
    rank: int
    clip_score: float
    seed: int
    width: int
    height: int
    content_type: str
    storage_key: str
    byte_size: int


@dataclass(frozen=True)
class JobOptions:
    """What a submission carries besides the generation parameters."""

    priority: int = DEFAULT_PRIORITY
    metadata: dict[str, Any] | None = None
    webhook_url: str | None = None
    webhook_events: list[str] = field(default_factory=list)
    idempotency_key: str | None = None
    request_hash: str | None = None


class IdempotencyConflict(Exception):
    """Another job of this tenant holds the idempotency key; it is attached."""

    def __init__(self, job: Job):
        super().__init__(job.id)
        self.job = job


def create(
    *,
    session: Session,
    params: JobParams,
    tenant_id: str | None = None,
    options: JobOptions | None = None,
) -> Job:
    """Insert a queued job. With an idempotency key held by a live job, raise
    IdempotencyConflict carrying that job (a key older than `idempotency_window` was released
    by `release_expired_idempotency_key`)."""
    options = options or JobOptions()
    job = Job(
        tenant_id=tenant_id,
        prompt=params.prompt,
        params=params.model_dump(mode="json"),
        model=params.model,
        status=JobStatus.queued,
        priority=options.priority,
        client_metadata=options.metadata,
        webhook_url=options.webhook_url,
        webhook_events=list(options.webhook_events),
        idempotency_key=options.idempotency_key,
        request_hash=options.request_hash,
        metrics={},
        images=[],
    )
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        if options.idempotency_key is None:
            raise
        existing = session.scalar(
            select(Job).where(
                Job.tenant_id == tenant_id, Job.idempotency_key == options.idempotency_key
            )
        )
        if existing is None:  # the holder vanished meanwhile: let the caller retry
            raise
        raise IdempotencyConflict(existing) from None
    return job


def release_expired_idempotency_key(
    *, session: Session, tenant_id: str | None, key: str, window: timedelta
) -> None:
    """A key is held for `window`; after that the same key starts a new job."""
    session.execute(
        update(Job)
        .where(
            Job.tenant_id == tenant_id,
            Job.idempotency_key == key,
            Job.created_at < utcnow() - window,
        )
        .values(idempotency_key=None)
        .execution_options(synchronize_session=False)
    )


def find_by_idempotency_key(*, session: Session, tenant_id: str | None, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def get(*, session: Session, job_id: str, tenant_id: str | None = None) -> Job:
    """The job, if it exists and (when a tenant is given) belongs to that tenant."""
    job = session.get(Job, job_id)
    if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
        raise NotFound(f"job {job_id!r} not found", param="id")
    return job


@dataclass(frozen=True)
class ListFilter:
    tenant_id: str | None = None
    status: JobStatus | None = None
    model: str | None = None
    created_after: datetime | None = None
    # Keyset cursor: the (created_at, id) of the last job of the previous page.
    before: tuple[datetime, str] | None = None


def list_recent(*, session: Session, limit: int, where: ListFilter | None = None) -> Sequence[Job]:
    """Newest first, stable under inserts: pages continue strictly after the cursor."""
    where = where or ListFilter()
    stmt = select(Job)
    if where.tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == where.tenant_id)
    if where.status is not None:
        stmt = stmt.where(Job.status == where.status)
    if where.model is not None:
        stmt = stmt.where(Job.model == where.model)
    if where.created_after is not None:
        stmt = stmt.where(Job.created_at > where.created_after)
    if where.before is not None:
        at, job_id = where.before
        stmt = stmt.where(or_(Job.created_at < at, and_(Job.created_at == at, Job.id < job_id)))
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return session.scalars(stmt).all()


def count_active(*, session: Session, tenant_id: str | None) -> int:
    stmt = (
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
    )
    return int(session.scalar(stmt) or 0)


def queue_position(*, session: Session, job: Job) -> int:
    """Jobs for the same model that run before this one: higher priority, or same and older."""
    ahead = or_(
        Job.priority > job.priority,
        and_(Job.priority == job.priority, Job.created_at < job.created_at),
    )
    stmt = (
        select(func.count())
        .select_from(Job)
        .where(Job.model == job.model, Job.status == JobStatus.queued, ahead)
    )
    return int(session.scalar(stmt) or 0)


def cancel(*, session: Session, job_id: str) -> datetime | None:
    """queued|running -> canceled. The time, or None if the job had already finished."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE))
        .values(status=JobStatus.canceled, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return now if result.rowcount == 1 else None  # type: ignore[attr-defined]


def delete(*, session: Session, job_id: str) -> None:
    job = session.get(Job, job_id)
    if job is not None:
        session.delete(job)


def claim(*, session: Session, job_id: str, worker: str) -> Job | None:
    """queued -> running, only if still queued. None means someone else has (or had) it."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(
            status=JobStatus.running,
            started_at=now,
            updated_at=now,
            worker=worker,
            attempts=Job.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    session.expire_all()
    return session.get(Job, job_id)


def _finish(
    *, session: Session, job_id: str, status: JobStatus, values: dict[str, Any]
) -> datetime | None:
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running)
        .values(status=status, finished_at=now, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    return now if result.rowcount == 1 else None  # type: ignore[attr-defined]


def succeed(
    *,
    session: Session,
    job_id: str,
    seed: int,
    images: Sequence[NewImage],
    metrics: dict[str, float],
) -> bool:
    """running -> succeeded with its images, in one transaction. False if no longer running."""
    if (
        _finish(
            session=session,
            job_id=job_id,
            status=JobStatus.succeeded,
            values={"seed": seed, "metrics": metrics},
        )
        is None
    ):
        return False
    session.add_all(JobImage(job_id=job_id, **vars(image)) for image in images)
    session.flush()
    return True


def fail(
    *, session: Session, job_id: str, code: str, message: str, metrics: dict[str, float]
) -> bool:
    """running -> failed with a reason. False if no longer running."""
    return (
        _finish(
            session=session,
            job_id=job_id,
            status=JobStatus.failed,
            values={"error_code": code, "error_message": message[:4000], "metrics": metrics},
        )
        is not None
    )
