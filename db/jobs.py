"""Job service functions. State changes are conditional UPDATEs so concurrent workers and
redelivered messages can never move a job backwards or finish it twice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from daikon.contract import JobParams, JobStatus
from daikon.errors import NotFound
from db.models import Job, JobImage, utcnow


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


def create(*, session: Session, params: JobParams) -> Job:
    job = Job(
        prompt=params.prompt,
        params=params.model_dump(mode="json"),
        status=JobStatus.queued,
        metrics={},
        images=[],
    )
    session.add(job)
    session.flush()
    return job


def get(*, session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} not found", param="id")
    return job


def list_recent(*, session: Session, limit: int) -> Sequence[Job]:
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return session.scalars(stmt).all()


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
