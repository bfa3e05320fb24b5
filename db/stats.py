"""Counts over all jobs for operators (/metrics, /v1/models): grouped queries on indexed
columns, computed when asked, so every API process reports the same numbers."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from daikon.contract import JobStatus
from db.models import Job


def jobs_by_status(*, session: Session) -> dict[JobStatus, int]:
    """Every status, zeros included."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts = {JobStatus(status): int(n) for status, n in rows}
    return {status: counts.get(status, 0) for status in JobStatus}


def queued_by_model(*, session: Session) -> dict[str, int]:
    """Queued jobs per model name (only models with any)."""
    stmt = select(Job.model, func.count()).where(Job.status == JobStatus.queued).group_by(Job.model)
    return {str(model): int(n) for model, n in session.execute(stmt).all()}
