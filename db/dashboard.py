"""What the admin dashboard reads and writes: sign-in sessions, the audit log, paused model
queues, job search and the operators' aggregates. Counts are grouped queries on indexed
columns, computed when asked, so every API process shows the same figures."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from daikon.contract import JobStatus
from db.models import (
    ApiKey,
    AuditEntry,
    DashboardSession,
    Job,
    JobImage,
    KeyScope,
    PausedModel,
    Tenant,
    utcnow,
)

# --- sessions -------------------------------------------------------------------------------


def _session_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def key_fingerprint(*, secret: bytes, key_hash: str) -> str:
    """What a session keeps of the key it was opened with: an HMAC of the key's SHA-256 (the
    api_keys row's `key_hash`) under the deployment's signing key. Keyed, so a leaked table
    does not let anyone test guesses of an operator-chosen DAIKON_ADMIN_KEY offline."""
    message = f"dashboard-session-key|{key_hash}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def create_session(
    *,
    session: Session,
    key_id: str | None,
    key_hash: str,
    secret: bytes,
    actor: str,
    scope: KeyScope,
    ttl: timedelta,
) -> str:
    """A new sign-in with the key whose SHA-256 is `key_hash`; returns the random token for
    the cookie (only its hash is stored)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        DashboardSession(
            id_hash=_session_hash(token),
            key_id=key_id,
            actor=actor,
            scope=scope,
            created_at=now,
            expires_at=now + ttl,
            key_fingerprint=key_fingerprint(secret=secret, key_hash=key_hash),
        )
    )
    session.flush()
    return token


def find_session(
    *, session: Session, token: str, secret: bytes, settings_key_hash: str | None
) -> DashboardSession | None:
    """The live session for a cookie: not expired, and the key it was opened with still the
    one that opens it: an API key not revoked, or DAIKON_ADMIN_KEY unchanged (its SHA-256 is
    `settings_key_hash`, None when the deployment has none) for a session of the settings'
    key. Checked on every request, so a new admin key ends the old key's sessions at once."""
    now = utcnow()
    row = session.get(DashboardSession, _session_hash(token))
    if row is None or row.expires_at <= now:
        return None
    if row.key_id is None:
        key_hash = settings_key_hash
    else:
        key = session.get(ApiKey, row.key_id)
        key_hash = key.key_hash if key is not None and key.revoked_at is None else None
    if key_hash is None:
        return None
    expected = key_fingerprint(secret=secret, key_hash=key_hash)
    if not hmac.compare_digest(row.key_fingerprint.encode(), expected.encode()):
        return None
    return row


def set_notice(*, session: Session, token: str, notice: str) -> None:
    """What the session's next page says about the action just taken (a flash message)."""
    session.execute(
        update(DashboardSession)
        .where(DashboardSession.id_hash == _session_hash(token))
        .values(notice=notice[:512])
    )


def take_notice(*, session: Session, token: str, notice: str) -> bool:
    """Clear the notice a page has shown; False if another request cleared it first."""
    result = session.execute(
        update(DashboardSession)
        .where(DashboardSession.id_hash == _session_hash(token), DashboardSession.notice == notice)
        .values(notice=None)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def end_session(*, session: Session, token: str) -> bool:
    result = session.execute(
        delete(DashboardSession).where(DashboardSession.id_hash == _session_hash(token))
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def purge_sessions(*, session: Session) -> int:
    """Expired sessions are useless; delete them (on each sign-in)."""
    result = session.execute(
        delete(DashboardSession).where(DashboardSession.expires_at <= utcnow())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- audit ----------------------------------------------------------------------------------


def audit(
    *,
    session: Session,
    actor: str,
    key_id: str | None,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Record one admin action, in the transaction that makes it (both or neither)."""
    entry = AuditEntry(
        actor=actor,
        key_id=key_id,
        action=action,
        target=target[:255],
        detail=detail or {},
        at=utcnow(),
    )
    session.add(entry)
    session.flush()
    return entry


def audit_log(
    *, session: Session, limit: int, before_id: int | None = None
) -> Sequence[AuditEntry]:
    """Newest first; pages continue below `before_id`."""
    stmt = select(AuditEntry)
    if before_id is not None:
        stmt = stmt.where(AuditEntry.id < before_id)
    return session.scalars(stmt.order_by(AuditEntry.id.desc()).limit(limit)).all()


# --- paused queues --------------------------------------------------------------------------


def pause(*, session: Session, model: str, by: str) -> bool:
    """Pause a model's queue; False if it was paused already."""
    try:
        with session.begin_nested():
            session.add(PausedModel(model=model, paused_by=by, paused_at=utcnow()))
    except IntegrityError:
        return False
    return True


def resume(*, session: Session, model: str) -> bool:
    result = session.execute(delete(PausedModel).where(PausedModel.model == model))
    return result.rowcount == 1  # type: ignore[attr-defined]


def has_work(*, session: Session, model: str) -> bool:
    """Whether the model has queued or running jobs (the queues page lists it then)."""
    stmt = select(Job.id).where(
        Job.model == model, Job.status.in_((JobStatus.queued, JobStatus.running))
    )
    return session.scalar(stmt.limit(1)) is not None


def paused(*, session: Session) -> dict[str, PausedModel]:
    return {p.model: p for p in session.scalars(select(PausedModel)).all()}


# --- job search -----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSearch:
    statuses: tuple[JobStatus, ...] = ()  # any of these; empty = every status
    tenant_id: str | None = None
    model: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    text: str | None = None  # a substring of the prompt, case-insensitive
    before: tuple[datetime, str] | None = None  # keyset cursor (created_at, id)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_jobs(*, session: Session, limit: int, where: JobSearch) -> Sequence[Job]:
    """Newest first; the cursor continues strictly after the last row of the previous page."""
    stmt = select(Job)
    if where.statuses:
        stmt = stmt.where(Job.status.in_(where.statuses))
    if where.tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == where.tenant_id)
    if where.model is not None:
        stmt = stmt.where(Job.model == where.model)
    if where.created_after is not None:
        stmt = stmt.where(Job.created_at >= where.created_after)
    if where.created_before is not None:
        stmt = stmt.where(Job.created_at < where.created_before)
    if where.text:
        pattern = f"%{_like_escape(where.text.lower())}%"
        stmt = stmt.where(func.lower(Job.prompt).like(pattern, escape="\\"))
    if where.before is not None:
        at, job_id = where.before
        stmt = stmt.where(or_(Job.created_at < at, and_(Job.created_at == at, Job.id < job_id)))
    return session.scalars(stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)).all()


def queued_ids(
    *, session: Session, model: str | None = None, tenant_id: str | None = None
) -> list[str]:
    """Queued jobs of a model and/or tenant, oldest first (what "cancel all queued" cancels)."""
    stmt = select(Job.id).where(Job.status == JobStatus.queued)
    if model is not None:
        stmt = stmt.where(Job.model == model)
    if tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == tenant_id)
    return list(session.scalars(stmt.order_by(Job.created_at, Job.id)).all())


def retries_of(*, session: Session, job_id: str) -> Sequence[Job]:
    return session.scalars(select(Job).where(Job.retry_of == job_id).order_by(Job.created_at)).all()


# --- overview -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    model: str
    by_priority: dict[int, int]
    oldest_queued_at: datetime | None
    running: int

    @property
    def total(self) -> int:
        return sum(self.by_priority.values())


def queues(*, session: Session, models: Sequence[str]) -> list[QueueRow]:
    """Queued jobs per model and priority, the oldest queued job, and running jobs; every
    configured model appears, and any other model that has jobs."""
    depth: dict[str, dict[int, int]] = {m: {} for m in models}
    for model, priority, n in session.execute(
        select(Job.model, Job.priority, func.count())
        .where(Job.status == JobStatus.queued)
        .group_by(Job.model, Job.priority)
    ).all():
        depth.setdefault(str(model), {})[int(priority)] = int(n)
    oldest = dict(
        session.execute(
            select(Job.model, func.min(Job.created_at))
            .where(Job.status == JobStatus.queued)
            .group_by(Job.model)
        ).all()
    )
    running = dict(
        session.execute(
            select(Job.model, func.count())
            .where(Job.status == JobStatus.running)
            .group_by(Job.model)
        ).all()
    )
    for model in running:
        depth.setdefault(str(model), {})
    rows = []
    for model, by_priority in depth.items():
        at = oldest.get(model)
        if at is not None and at.tzinfo is None:  # SQLite aggregates lose the type decorator
            at = at.replace(tzinfo=utcnow().tzinfo)
        rows.append(
            QueueRow(
                model,
                dict(sorted(by_priority.items(), reverse=True)),
                at,
                int(running.get(model, 0)),
            )
        )
    return rows


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo is not None else value.replace(tzinfo=utcnow().tzinfo)


def statuses_since(*, session: Session, since: datetime) -> dict[JobStatus, int]:
    """Jobs created since `since`, by status (every status, zeros included)."""
    rows = session.execute(
        select(Job.status, func.count()).where(Job.created_at >= since).group_by(Job.status)
    ).all()
    counts = {JobStatus(s): int(n) for s, n in rows}
    return {s: counts.get(s, 0) for s in JobStatus}


def images_since(*, session: Session, since: datetime) -> int:
    stmt = select(func.count()).select_from(JobImage).where(JobImage.created_at >= since)
    return int(session.scalar(stmt) or 0)


def failures_by_code(*, session: Session, since: datetime) -> dict[str, int]:
    rows = session.execute(
        select(Job.error_code, func.count())
        .where(Job.status == JobStatus.failed, Job.finished_at >= since)
        .group_by(Job.error_code)
        .order_by(func.count().desc())
    ).all()
    return {str(code or "unknown"): int(n) for code, n in rows}


def running_jobs(*, session: Session) -> Sequence[Job]:
    return session.scalars(
        select(Job).where(Job.status == JobStatus.running).order_by(Job.started_at)
    ).all()


@dataclass(frozen=True)
class Series:
    """Per-minute figures over a window, oldest first."""

    start: datetime
    step: timedelta
    queued: list[int] = field(default_factory=list)  # jobs that waited in the queue each minute
    finished: list[int] = field(default_factory=list)  # jobs that finished in each minute
    images: list[int] = field(default_factory=list)  # images kept in each minute


def series(*, session: Session, since: datetime, now: datetime, step: timedelta) -> Series:
    """Queue depth and throughput over time, rebuilt from the jobs' own timestamps (nothing
    is sampled, so the history survives restarts and every process draws the same)."""
    n = max(1, int((now - since) / step))
    start = now - n * step
    out = Series(start=start, step=step, queued=[0] * n, finished=[0] * n, images=[0] * n)
    # Jobs that were queued at some moment of the window: created before its end and not yet
    # started (or finished) when it began.
    left_queue = func.coalesce(Job.started_at, Job.finished_at)
    rows = session.execute(
        select(Job.created_at, left_queue).where(
            Job.created_at < now, or_(left_queue.is_(None), left_queue > start)
        )
    ).all()
    spans = [(_aware(created), None if left is None else _aware(left)) for created, left in rows]
    for index in range(n):
        t0, t1 = start + index * step, start + (index + 1) * step
        out.queued[index] = sum(1 for c, left in spans if c < t1 and (left is None or left > t0))
    for (finished,) in session.execute(
        select(Job.finished_at).where(Job.finished_at >= start, Job.finished_at < now)
    ).all():
        out.finished[min(n - 1, int((_aware(finished) - start) / step))] += 1
    for (made,) in session.execute(
        select(JobImage.created_at).where(JobImage.created_at >= start, JobImage.created_at < now)
    ).all():
        out.images[min(n - 1, int((_aware(made) - start) / step))] += 1
    return out


# --- usage ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    tenant_id: str
    tenant: str
    jobs: int
    succeeded: int
    images: int
    gpu_seconds: float  # the workers' time on the tenant's jobs (metrics.total_seconds)


def usage(*, session: Session, since: datetime, until: datetime) -> list[Usage]:
    """Per tenant, jobs created in [since, until): how many, how many images were kept, and
    how much worker time they used. Tenants without jobs are listed with zeros."""
    in_period = and_(Job.created_at >= since, Job.created_at < until)
    seconds = func.coalesce(func.sum(Job.metrics["total_seconds"].as_float()), 0.0)
    jobs_rows = {
        tid: (int(n), int(ok or 0), float(s or 0.0))
        for tid, n, ok, s in session.execute(
            select(
                Job.tenant_id,
                func.count(),
                func.count().filter(Job.status == JobStatus.succeeded),
                seconds,
            )
            .where(in_period)
            .group_by(Job.tenant_id)
        ).all()
    }
    image_rows = dict(
        session.execute(
            select(Job.tenant_id, func.count(JobImage.id))
            .join(JobImage, JobImage.job_id == Job.id)
            .where(in_period)
            .group_by(Job.tenant_id)
        ).all()
    )
    out = []
    for tenant in session.scalars(select(Tenant).order_by(Tenant.name)).all():
        n, ok, s = jobs_rows.get(tenant.id, (0, 0, 0.0))
        out.append(
            Usage(tenant.id, tenant.name, n, ok, int(image_rows.get(tenant.id, 0)), round(s, 3))
        )
    return out
