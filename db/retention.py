"""Retention and per-tenant storage: what a tenant keeps stored, its quota, and the deletion
of ended jobs once their period is over.

Deleting is two steps, so a crash anywhere leaves nothing behind and nothing dangling:
`expire` deletes a job's rows (images, webhook deliveries, the job) and, in the same
transaction, records its storage objects in pending_deletions and takes their bytes off the
tenant; `take_deletions` / `forget_deletions` then delete the objects and their records. The
rows go first, so no client is ever served a job whose objects are gone (it answers 404 the
moment the transaction commits); a crash before the objects are deleted leaves their records,
which the next sweep finishes (deleting a missing object is no error). The objects outlive
their rows by OBJECT_GRACE: an API process answers a poll of a finished job from memory for up
to 30 s without reading its row (api/caches.py BodyCache), and such an answer's image URLs
must still lead somewhere; after that every process answers 404.

An object belongs to the job whose id names its folder (server/storage.py: `<job id>/...`): a
retry shares its original's inputs without owning them, and a job with inputs is kept while a
retry of it exists (that retry would read them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from daikon.contract import JobStatus
from daikon.errors import Forbidden, NotFound, RequestErrorCode
from daikon.webhooks import DeliveryStatus
from db.models import Job, JobImage, PendingDeletion, Tenant, WebhookDelivery

# The order in which a round's batch is spent: the least useful first.
EXPIRY_ORDER = (JobStatus.canceled, JobStatus.failed, JobStatus.succeeded)
# Above the API's finished-job cache's age limit (30 s), with room for clocks and slow rounds.
OBJECT_GRACE = timedelta(seconds=90)


class StorageQuotaExceeded(Forbidden):
    """403: waiting does not help (429 would invite retries); deleting jobs, retention or an
    admin's larger quota does."""

    code = RequestErrorCode.storage_quota_exceeded


# --- accounting ---------------------------------------------------------------------------


def owned_inputs(job_id: str, inputs: dict[str, Any] | None) -> list[tuple[str, int]]:
    """(key, bytes) of the inputs stored under this job's own id (a retry's are its
    original's)."""
    if not isinstance(inputs, dict):
        return []
    return [
        (str(record["key"]), int(record.get("byte_size") or 0))
        for record in inputs.values()
        if isinstance(record, dict) and f"{job_id}/" in str(record.get("key", ""))
    ]


def add_stored_bytes(*, session: Session, tenant_id: str | None, delta: int) -> None:
    """Move a tenant's stored bytes, inside the caller's transaction (an atomic UPDATE, so
    concurrent writers never lose one another's bytes)."""
    if tenant_id is None or delta == 0:
        return
    session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(stored_bytes=Tenant.stored_bytes + delta)
        .execution_options(synchronize_session=False)
    )


def add_job_images(*, session: Session, job_id: str, byte_sizes: Iterable[int]) -> None:
    """A job's images were recorded: count them to its tenant."""
    total = sum(byte_sizes)
    if total:  # one statement: the tenant found by the job, no read before
        owner = select(Job.tenant_id).where(Job.id == job_id).scalar_subquery()
        session.execute(
            update(Tenant)
            .where(Tenant.id == owner)
            .values(stored_bytes=Tenant.stored_bytes + total)
            .execution_options(synchronize_session=False)
        )


@dataclass(frozen=True)
class StorageUsage:
    tenant_id: str
    stored_bytes: int
    quota_bytes: int | None  # None: no quota
    own_quota: bool  # the tenant's own (set by an admin), not the deployment's


def usage(*, session: Session, tenant_id: str, default_quota: int) -> StorageUsage:
    """`default_quota`: the deployment's (0 = none)."""
    row = session.execute(
        select(Tenant.stored_bytes, Tenant.storage_quota_bytes).where(Tenant.id == tenant_id)
    ).one_or_none()
    stored, own = (int(row[0] or 0), row[1]) if row is not None else (0, None)
    quota = own if own is not None else (default_quota or None)
    return StorageUsage(tenant_id, stored, quota, own is not None)


def usage_by_tenant(*, session: Session, default_quota: int) -> dict[str, StorageUsage]:
    """Every tenant's, by id (the dashboard's usage page)."""
    return {
        tenant_id: StorageUsage(
            tenant_id,
            int(stored or 0),
            own if own is not None else (default_quota or None),
            own is not None,
        )
        for tenant_id, stored, own in session.execute(
            select(Tenant.id, Tenant.stored_bytes, Tenant.storage_quota_bytes)
        )
    }


def check_quota(*, session: Session, tenant_id: str, default_quota: int, incoming: int = 0) -> None:
    """Refuse a submission (403 storage_quota_exceeded) when the tenant is at its quota, or
    its `incoming` bytes (an edit's inputs) would take it past. Jobs accepted before may
    still finish past it: their outputs are not known in advance."""
    found = usage(session=session, tenant_id=tenant_id, default_quota=default_quota)
    quota = found.quota_bytes
    if quota is None:
        return
    if found.stored_bytes >= quota or found.stored_bytes + incoming > quota:
        more = f" and this job's inputs are {incoming} bytes" if incoming else ""
        raise StorageQuotaExceeded(
            f"this tenant stores {found.stored_bytes} bytes{more}; its storage quota is {quota} "
            "bytes: nothing was stored. Space comes back as ended jobs pass their retention "
            "period (GET /v1/usage shows both figures), or an admin can raise the quota"
        )


def set_quota(*, session: Session, tenant_id: str, quota_bytes: int | None) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id!r} not found", param="tenant_id")
    tenant.storage_quota_bytes = quota_bytes
    session.flush()
    return tenant


# --- expiry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expired:
    jobs: int  # rows deleted
    objects: int  # storage objects recorded for deletion


def _objects_of(
    session: Session, job_ids: Sequence[str], inputs: dict[str, Any]
) -> dict[str, list[tuple[str, int]]]:
    """(key, bytes) of each job's own objects: its images and the inputs under its id."""
    found: dict[str, list[tuple[str, int]]] = {job_id: [] for job_id in job_ids}
    for job_id, key, size in session.execute(
        select(JobImage.job_id, JobImage.storage_key, JobImage.byte_size).where(
            JobImage.job_id.in_(job_ids)
        )
    ):
        found[job_id].append((key, int(size or 0)))
    for job_id in job_ids:
        found[job_id].extend(owned_inputs(job_id, inputs.get(job_id)))
    return found


def expire(
    *, session: Session, periods: dict[JobStatus, timedelta], now: datetime, limit: int
) -> Expired:
    """Delete up to `limit` jobs that ended (by status) longer ago than their period,
    canceled first, then failed, then succeeded; a status without a period is kept. Kept
    anyway: a job whose webhook deliveries are still being attempted, and a job with inputs
    while a retry of it exists. Each delete is conditional on the job still being expired,
    so concurrent sweepers delete (and uncount) a job once."""
    jobs_done = objects_done = 0
    for status in EXPIRY_ORDER:
        period = periods.get(status)
        left = limit - jobs_done
        if period is None or left <= 0:
            continue
        cutoff = now - period
        rows = session.execute(
            select(Job.id, Job.tenant_id, Job.inputs)
            .where(Job.status == status, Job.finished_at < cutoff)
            .order_by(Job.finished_at)
            .limit(left)
        ).all()
        if not rows:
            continue
        ids = [r[0] for r in rows]
        busy = set(
            session.scalars(
                select(WebhookDelivery.job_id).where(
                    WebhookDelivery.job_id.in_(ids),
                    WebhookDelivery.status == DeliveryStatus.pending,
                )
            )
        )
        retried = set(session.scalars(select(Job.retry_of).where(Job.retry_of.in_(ids))))
        inputs = {job_id: value for job_id, _, value in rows if value}
        objects = _objects_of(session, ids, inputs)
        for job_id, tenant_id, _ in rows:
            if job_id in busy or (job_id in retried and job_id in inputs):
                continue
            gone = session.execute(
                delete(Job)
                .where(Job.id == job_id, Job.status == status, Job.finished_at < cutoff)
                .execution_options(synchronize_session=False)
            )  # images, deliveries and their attempts go with it (ON DELETE CASCADE)
            if gone.rowcount != 1:  # type: ignore[attr-defined]
                continue  # another sweeper's
            own = objects[job_id]
            session.add_all(
                PendingDeletion(key=key, job_id=job_id, delete_after=now + OBJECT_GRACE)
                for key, _ in own
            )
            add_stored_bytes(
                session=session, tenant_id=tenant_id, delta=-sum(size for _, size in own)
            )
            jobs_done += 1
            objects_done += len(own)
    session.flush()
    return Expired(jobs_done, objects_done)


@dataclass(frozen=True)
class Deletion:
    id: int
    key: str


def take_deletions(*, session: Session, limit: int, now: datetime) -> list[Deletion]:
    """The oldest objects due for deletion (their grace over). Two sweepers may take the same
    ones: deleting an object twice is harmless, and so is forgetting its record twice."""
    rows = session.execute(
        select(PendingDeletion.id, PendingDeletion.key)
        .where(PendingDeletion.delete_after <= now)
        .order_by(PendingDeletion.id)
        .limit(limit)
    )
    return [Deletion(int(i), str(k)) for i, k in rows]


def forget_deletions(*, session: Session, ids: Sequence[int]) -> None:
    """These objects are deleted: drop their records."""
    if ids:
        session.execute(delete(PendingDeletion).where(PendingDeletion.id.in_(list(ids))))


def count_pending(*, session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(PendingDeletion)) or 0)
