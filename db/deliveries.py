"""Webhook records: signing secrets (encrypted), deliveries (the outbox and the retry schedule)
and their attempts. Every change of who may send an attempt is a conditional UPDATE, so duplicate
broker messages, two dispatchers or a redelivery racing a retry never send one attempt twice.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from daikon.contract import JobStatus, WebhookEvent
from daikon.errors import Conflict, NotFound, RequestErrorCode
from daikon.webhooks import DeliveryStatus
from db.models import (
    Job,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDisabledUrl,
    WebhookSecret,
    utcnow,
)
from server.encryption import Cipher, is_encrypted
from server.webhooks import MAX_ATTEMPTS, signing
from server.webhooks.safety import Allowlist

# Expired secrets are kept a while after their overlap ends, then removed.
SECRET_RETENTION = timedelta(days=7)
log = logging.getLogger(__name__)
# (job, event, at, step) -> the event's body
Render = Callable[[Job, WebhookEvent, datetime | None, tuple[int, int] | None], str]


# --- destinations ---------------------------------------------------------------------------


def allowlist_for(
    *, session: Session, tenant_id: str | None, allow: Allowlist, trusted: frozenset[str]
) -> Allowlist:
    """The deployment's allowlist as it applies to a tenant's webhooks: one rule for the
    submit-time check (api/submission.py) and every delivery (worker/webhooks/deliver.py)."""
    if not trusted or (not allow.hosts and not allow.networks):
        return allow
    tenant = session.get(Tenant, tenant_id) if tenant_id is not None else None
    return allow.for_tenant(tenant.name if tenant is not None else "", trusted)


# --- secrets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rotation:
    secret: str  # in clear: shown to the tenant once, never stored so
    created_at: datetime
    previous_expires_at: datetime | None


def rotate_secret(
    *,
    session: Session,
    tenant_id: str,
    overlap: timedelta,
    cipher: Cipher,
    now: datetime | None = None,
) -> Rotation:
    """A new current secret; the current one (if any) keeps signing for `overlap`."""
    now = now or utcnow()
    previous_expires = now + overlap if overlap > timedelta(0) else now
    result = session.execute(
        update(WebhookSecret)
        .where(WebhookSecret.tenant_id == tenant_id, WebhookSecret.expires_at.is_(None))
        .values(expires_at=previous_expires)
        .execution_options(synchronize_session=False)
    )
    # Shorten, never lengthen, older overlaps: an emergency rotation (overlap 0) must end them.
    session.execute(
        update(WebhookSecret)
        .where(WebhookSecret.tenant_id == tenant_id, WebhookSecret.expires_at > previous_expires)
        .values(expires_at=previous_expires)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete(WebhookSecret).where(
            WebhookSecret.tenant_id == tenant_id,
            WebhookSecret.expires_at < now - SECRET_RETENTION,
        )
    )
    plain = signing.new_secret()
    session.add(WebhookSecret(tenant_id=tenant_id, secret=cipher.encrypt(plain), created_at=now))
    session.flush()
    had_one = result.rowcount > 0  # type: ignore[attr-defined]
    return Rotation(plain, now, previous_expires if had_one else None)


def signing_secrets(
    *, session: Session, tenant_id: str, now: datetime, cipher: Cipher
) -> list[str]:
    """The secrets that sign now, newest first, in clear. A tenant that never made one gets
    one here (deliveries are always signed); `POST /v1/webhooks/secret` then shows it a new
    one. A secret stored before encryption at rest is encrypted on the way."""
    rows = session.scalars(
        select(WebhookSecret)
        .where(
            WebhookSecret.tenant_id == tenant_id,
            or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now),
        )
        .order_by(WebhookSecret.created_at.desc())
    ).all()
    if rows:
        for row in rows:
            if not is_encrypted(row.secret):
                row.secret = cipher.encrypt(row.secret)
        return [cipher.decrypt(r.secret) for r in rows]
    plain = signing.new_secret()
    session.add(WebhookSecret(tenant_id=tenant_id, secret=cipher.encrypt(plain), created_at=now))
    session.flush()
    return [plain]


def reencrypt_secrets(*, session: Session, cipher: Cipher, tenant_id: str | None = None) -> int:
    """Every stored secret (of every tenant, or of one) encrypted under the cipher's first key
    (key rotation); the number re-encrypted."""
    stmt = select(WebhookSecret)
    if tenant_id is not None:
        stmt = stmt.where(WebhookSecret.tenant_id == tenant_id)
    rows = session.scalars(stmt).all()
    for row in rows:
        row.secret = cipher.rotate(row.secret)
    session.flush()
    return len(rows)


# --- events ---------------------------------------------------------------------------------


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def is_disabled(*, session: Session, tenant_id: str, url: str) -> bool:
    return session.get(WebhookDisabledUrl, (tenant_id, url_hash(url))) is not None


def wants(job: Job, event: WebhookEvent) -> bool:
    return (
        bool(job.webhook_url)
        and job.tenant_id is not None
        and (event.value in (job.webhook_events or []))
    )


def record(
    *,
    session: Session,
    job: Job,
    event: WebhookEvent,
    payload: str,
    max_attempts: int = MAX_ATTEMPTS,
) -> str:
    """Store the event's frozen body and schedule its first attempt (now), in the caller's
    transaction: the state change and its webhook commit together or not at all."""
    assert job.webhook_url is not None and job.tenant_id is not None
    now = utcnow()
    disabled = is_disabled(session=session, tenant_id=job.tenant_id, url=job.webhook_url)
    delivery = WebhookDelivery(
        id=signing.new_message_id(),
        job_id=job.id,
        tenant_id=job.tenant_id,
        event=event.value,
        url=job.webhook_url,
        payload=payload,
        status=DeliveryStatus.disabled if disabled else DeliveryStatus.pending,
        attempts=0,
        max_attempts=max_attempts,
        next_attempt_at=None if disabled else now,
        queued_at=None if disabled else now,  # the caller publishes it after the commit
        created_at=now,
        updated_at=now,
        last_error="endpoint disabled after 410 Gone" if disabled else None,
    )
    session.add(delivery)
    session.flush()
    return delivery.id


UNRENDERED_PREFIX = "the event could not be rendered"


def record_unrenderable(*, session: Session, job: Job, event: WebhookEvent, error: str) -> None:
    """An event whose body could not be made: a failed delivery with no attempt, which the
    tenant sees on the job and /metrics counts."""
    assert job.webhook_url is not None and job.tenant_id is not None
    now = utcnow()
    delivery = WebhookDelivery(
        id=signing.new_message_id(),
        job_id=job.id,
        tenant_id=job.tenant_id,
        event=event.value,
        url=job.webhook_url,
        payload="",
        status=DeliveryStatus.failed,
        attempts=0,
        max_attempts=0,
        next_attempt_at=None,
        queued_at=None,
        created_at=now,
        updated_at=now,
        last_error=f"{UNRENDERED_PREFIX}: {error}"[:255],
    )
    session.add(delivery)
    session.flush()


def count_unrendered(*, session: Session) -> int:
    """Events that could not be rendered (failed before any attempt): for /metrics."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(
                WebhookDelivery.status == DeliveryStatus.failed,
                WebhookDelivery.attempts == 0,
                WebhookDelivery.last_error.startswith(UNRENDERED_PREFIX),
            )
        )
        or 0
    )


@dataclass(frozen=True)
class Outbox:
    """Webhook events raised where a job changes (the API's cancel, the worker's state
    changes): rendered and recorded in the transaction that changes the job, published after
    it commits. A failed publish loses nothing: the dispatcher finds the row and publishes it
    again. An event that cannot be rendered is never silent: it becomes a failed delivery the
    tenant sees on the job, /metrics counts, and the log explains."""

    render: Render  # the frozen body (server.job_view.EventRenderer)
    publish: Callable[[str], None]  # delivery id -> a broker message for the webhook queue

    def record(
        self,
        session: Session,
        job: Job,
        event: WebhookEvent,
        *,
        at: datetime | None = None,
        step: tuple[int, int] | None = None,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> list[str]:
        """Inside the state change's transaction: the delivery ids to send after the commit
        (none if the job did not subscribe). A webhook problem never stops the job's own
        state change."""
        if not wants(job, event):
            return []
        try:
            body = self.render(job, event, at, step)
        except Exception as e:
            log.exception("webhook %s for job %s could not be rendered", event.value, job.id)
            record_unrenderable(
                session=session, job=job, event=event, error=f"{type(e).__name__}: {e}"
            )
            return []
        try:
            with session.begin_nested():
                delivery_id = record(
                    session=session, job=job, event=event, payload=body, max_attempts=max_attempts
                )
        except Exception:
            log.exception("webhook %s for job %s not recorded", event.value, job.id)
            return []
        return [delivery_id]

    def send(self, delivery_ids: Iterable[str]) -> None:
        for delivery_id in delivery_ids:
            try:
                self.publish(delivery_id)
            except Exception as e:
                log.warning("webhook %s not published (the dispatcher retries): %s", delivery_id, e)


# --- attempts -------------------------------------------------------------------------------


def _due(now: datetime) -> list[object]:
    return [
        WebhookDelivery.status == DeliveryStatus.pending,
        WebhookDelivery.next_attempt_at <= now,
        WebhookDelivery.attempts < WebhookDelivery.max_attempts,
        or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until <= now),
    ]


def claim_attempt(
    *, session: Session, delivery_id: str, now: datetime, lease: timedelta
) -> WebhookDelivery | None:
    """Take the due attempt of a delivery; None if it is not due, done, or being sent."""
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, *_due(now))  # type: ignore[arg-type]
        .values(locked_until=now + lease, attempts=WebhookDelivery.attempts + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    session.expire_all()
    return session.get(WebhookDelivery, delivery_id)


def take_due(
    *, session: Session, now: datetime, requeue_after: timedelta, limit: int = 200
) -> list[str]:
    """Due deliveries with no live broker message, marked as published now (the caller
    publishes them). Each row is taken by a conditional UPDATE: concurrent dispatchers split
    the rows, never share one."""
    lost = or_(
        WebhookDelivery.queued_at.is_(None), WebhookDelivery.queued_at <= now - requeue_after
    )
    candidates = session.scalars(
        select(WebhookDelivery.id)
        .where(*_due(now), lost)  # type: ignore[arg-type]
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    ).all()
    taken: list[str] = []
    for delivery_id in candidates:
        result = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, *_due(now), lost)  # type: ignore[arg-type]
            .values(queued_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            taken.append(delivery_id)
    return taken


@dataclass(frozen=True)
class AttemptRecord:
    attempt: int
    started_at: datetime
    duration_ms: int
    address: str | None
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    response_bytes: int | None = None


def finish_attempt(
    *,
    session: Session,
    delivery: WebhookDelivery,
    record: AttemptRecord,
    status: DeliveryStatus,
    next_attempt_at: datetime | None,
    queued_at: datetime | None,
    now: datetime,
) -> bool:
    """Log the attempt and move the delivery on. False (and the delivery left alone) if the
    attempt's lease ran out and another attempt has started since."""
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id,
            attempt=record.attempt,
            started_at=record.started_at,
            duration_ms=record.duration_ms,
            address=record.address,
            status_code=record.status_code,
            error=record.error,
            response_excerpt=record.response_excerpt,
            response_bytes=record.response_bytes,
            next_attempt_at=next_attempt_at,
        )
    )
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery.id,
            WebhookDelivery.attempts == record.attempt,
            WebhookDelivery.status == DeliveryStatus.pending,
        )
        .values(
            status=status,
            next_attempt_at=next_attempt_at,
            queued_at=queued_at,
            locked_until=None,
            last_status_code=record.status_code,
            last_error=record.error,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if status is DeliveryStatus.disabled:
        disable_url(
            session=session,
            tenant_id=delivery.tenant_id,
            url=delivery.url,
            delivery_id=delivery.id,
            now=now,
        )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def put_back(
    *,
    session: Session,
    delivery_id: str,
    attempt: int,
    next_attempt_at: datetime,
    queued_at: datetime | None,
    now: datetime,
) -> bool:
    """Hand back a claimed attempt unsent (the gates held it: its endpoint or tenant busy, its
    circuit open): the attempt is not spent and the delivery is due again at
    `next_attempt_at`. False if the claim had lapsed and another attempt started since."""
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.attempts == attempt,
            WebhookDelivery.status == DeliveryStatus.pending,
        )
        .values(
            attempts=attempt - 1,
            locked_until=None,
            next_attempt_at=next_attempt_at,
            queued_at=queued_at,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def end_unsent(
    *, session: Session, delivery_id: str, attempt: int, error: str, now: datetime
) -> bool:
    """End a claimed attempt's delivery `failed` without sending it (a fire-once event the
    gates held, or one whose endpoint stayed unreachable past the retry schedule's span);
    the attempt is not spent and `error` says why."""
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.attempts == attempt,
            WebhookDelivery.status == DeliveryStatus.pending,
        )
        .values(
            status=DeliveryStatus.failed,
            attempts=attempt - 1,
            locked_until=None,
            next_attempt_at=None,
            queued_at=None,
            last_error=error[:255],
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def mark_disabled(*, session: Session, delivery_id: str, now: datetime) -> None:
    """A claimed delivery whose URL was disabled meanwhile: end it unsent."""
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == DeliveryStatus.pending)
        .values(
            status=DeliveryStatus.disabled,
            next_attempt_at=None,
            queued_at=None,
            locked_until=None,
            attempts=WebhookDelivery.attempts - 1,
            last_error="endpoint disabled after 410 Gone",
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


def disable_url(
    *, session: Session, tenant_id: str, url: str, delivery_id: str, now: datetime
) -> None:
    if is_disabled(session=session, tenant_id=tenant_id, url=url):
        return
    try:
        with session.begin_nested():
            session.add(
                WebhookDisabledUrl(
                    tenant_id=tenant_id,
                    url_hash=url_hash(url),
                    url=url,
                    disabled_at=now,
                    delivery_id=delivery_id,
                )
            )
    except IntegrityError:  # disabled concurrently
        pass


# --- reading and redelivery -----------------------------------------------------------------


def list_for_job(*, session: Session, job_id: str) -> Sequence[WebhookDelivery]:
    return session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.job_id == job_id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    ).all()


def get(*, session: Session, delivery_id: str) -> WebhookDelivery:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise NotFound(f"webhook delivery {delivery_id!r} not found", param="id")
    return delivery


def redeliver(
    *, session: Session, delivery_id: str, now: datetime | None = None
) -> WebhookDelivery:
    """Schedule one more attempt now, same webhook-id and body, whatever the delivery's state;
    a URL disabled by a 410 is enabled again (an operator asked for this send)."""
    now = now or utcnow()
    delivery = get(session=session, delivery_id=delivery_id)
    if delivery.locked_until is not None and delivery.locked_until > now:
        raise Conflict(
            f"an attempt of {delivery_id!r} is in flight; retry in a moment",
            param="id",
            code=RequestErrorCode.delivery_in_flight,
        )
    session.execute(
        delete(WebhookDisabledUrl).where(
            WebhookDisabledUrl.tenant_id == delivery.tenant_id,
            WebhookDisabledUrl.url_hash == url_hash(delivery.url),
        )
    )
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.attempts == delivery.attempts,
            or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until <= now),
        )
        .values(
            status=DeliveryStatus.pending,
            next_attempt_at=now,
            queued_at=now,
            locked_until=None,
            updated_at=now,
            max_attempts=max(delivery.max_attempts, delivery.attempts + 1),
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(
            f"an attempt of {delivery_id!r} started meanwhile; retry in a moment",
            param="id",
            code=RequestErrorCode.delivery_in_flight,
        )
    session.expire_all()
    return get(session=session, delivery_id=delivery_id)


def job_is_running(*, session: Session, job_id: str) -> Job | None:
    job = session.get(Job, job_id)
    return job if job is not None and job.status is JobStatus.running else None
