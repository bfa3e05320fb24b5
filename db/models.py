"""Typed ORM models. Every timestamp is stored and returned as timezone-aware UTC."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from daikon.contract import JobStatus
from daikon.resources import KeyScope  # the API contract names the scopes
from daikon.webhooks import DeliveryStatus

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """SQLite drops the zone; put it back so comparisons and ISO output are always UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def new_id() -> str:
    return str(uuid.uuid4())


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The tenant's own limits, set on the dashboard; None = the deployment's (Settings.limits).
    submits_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_active_jobs: Mapped[int | None] = mapped_column(Integer)
    max_candidates: Mapped[int | None] = mapped_column(Integer)
    # Bytes of the tenant's stored objects (edit inputs, output images), kept exact: moved in
    # the transaction that records or forgets them (db/retention.py).
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The tenant's own storage quota; None = the deployment's (tenant_storage_quota_bytes).
    storage_quota_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # The highest priority its jobs may ask for; None = the deployment's (the admin tenant: all).
    max_priority: Mapped[int | None] = mapped_column(Integer)


class ApiKey(Base):
    """Only a SHA-256 of the key is stored: keys are 256-bit random, so a fast hash is safe,
    and a lookup by hash needs no per-key salt scan."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings to tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    scope: Mapped[KeyScope] = mapped_column(
        Enum(KeyScope, native_enum=False, length=16, create_constraint=True, name="key_scope"),
        default=KeyScope.tenant,
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    tenant: Mapped[Tenant] = relationship(lazy="joined")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=16, create_constraint=True, name="job_status"),
        default=JobStatus.queued,
    )
    prompt: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    seed: Mapped[int | None] = mapped_column(BigInteger)  # base seed actually used
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    model: Mapped[str] = mapped_column(String(64), default="default")
    # Megapixel-steps (JobParams.cost): summed per tenant and model for the queued-cost budget.
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    priority: Mapped[int] = mapped_column(SmallInteger, default=5)
    # Its tenant's round at this model and priority (db/jobs.py: next_turn): within a priority
    # the queue runs turn by turn, so a tenant's backlog cannot keep another's job waiting.
    turn: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    client_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str]] = mapped_column(JSONType, default=list)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # Outbox: set once the job's message is confirmed published; the sweeper publishes again
    # a queued job that has none after a while (the API died between commit and publish).
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Lease of the worker running the job ("host:pid"), renewed while it runs.
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A retry from the dashboard: the job whose parameters this one repeats.
    retry_of: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    # An edit job's input objects, by role ("image", "mask"): key, width, height, content_type,
    # byte_size, sha256 (api/inputs.py). None for a text job.
    inputs: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # What makes two jobs exact repeats (db/jobs.py repeat_key), set when the job succeeds:
    # a later identical job of the tenant may be answered with copies of its images.
    repeat_key: Mapped[str | None] = mapped_column(String(64))
    # The earlier job whose images this one copied instead of running. No foreign key: the
    # job keeps saying where its images came from after that job is deleted.
    reused_from: Mapped[str | None] = mapped_column(String(36))

    images: Mapped[list[JobImage]] = relationship(
        back_populates="job",
        order_by="JobImage.rank",
        cascade="all, delete-orphan",
        lazy="selectin",
    )

    __table_args__ = (
        Index("ix_jobs_created_at", "created_at"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_tenant_id_created_at", "tenant_id", "created_at"),
        Index("ix_jobs_tenant_turn", "tenant_id", "status", "model", "priority", "turn"),
        Index("ix_jobs_run_order", "model", "status", "priority", "turn", "created_at"),
        Index("ix_jobs_status_lease_expires_at", "status", "lease_expires_at"),
        Index("ix_jobs_status_finished_at", "status", "finished_at"),  # retention
        Index("ix_jobs_repeat_key", "repeat_key"),
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_id_idempotency_key"),
    )


class JobImage(Base):
    __tablename__ = "job_images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    rank: Mapped[int] = mapped_column(Integer)
    clip_score: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(512))
    byte_size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="images")

    __table_args__ = (UniqueConstraint("job_id", "rank"),)


# --- webhooks -------------------------------------------------------------------------------


class WebhookSecret(Base):
    """A tenant's signing secret, encrypted at rest (server/encryption.py): signing needs the
    secret itself, so it cannot be hashed. Shown to the tenant only when made. `expires_at` is
    None for the current one; a rotation gives the previous one an expiry (the overlap), during
    which both sign."""

    __tablename__ = "webhook_secrets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    secret: Mapped[str] = mapped_column(Text)  # "fernet:<token>"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One event for one URL: its frozen body and where its delivery stands. The id is the
    webhook-id header, the same on every attempt. The schedule lives here (next_attempt_at),
    not in broker ETAs, so it survives worker and broker restarts."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)  # the exact body every attempt sends
    status: Mapped[DeliveryStatus] = mapped_column(
        Enum(
            DeliveryStatus,
            native_enum=False,
            length=16,
            create_constraint=True,
            name="webhook_delivery_status",
        ),
        default=DeliveryStatus.pending,
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(SmallInteger)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When a broker message for the due attempt was last published; the dispatcher publishes
    # again only if that message seems lost.
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # An attempt is in flight until then; a worker that died mid-attempt frees it by expiring.
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(255))

    log: Mapped[list[WebhookAttempt]] = relationship(
        order_by="WebhookAttempt.attempt", cascade="all, delete-orphan", lazy="selectin"
    )

    __table_args__ = (
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )


class WebhookAttempt(Base):
    """One POST: when, how long, what came back (a short excerpt, never the whole body)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int] = mapped_column(Integer)
    address: Mapped[str | None] = mapped_column(String(64))  # the IP connected to
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(255))
    # The start of the answer, only from receivers outside the operator's allowlist: an
    # allowlisted host may be an internal service whose answers a tenant must not read.
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    response_bytes: Mapped[int | None] = mapped_column(Integer)  # how much of it was read
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("delivery_id", "attempt"),)


class WebhookDisabledUrl(Base):
    """A tenant's URL that answered 410 Gone: later events to it are recorded, not sent."""

    __tablename__ = "webhook_disabled_urls"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    url_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of url
    url: Mapped[str] = mapped_column(Text)
    disabled_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivery_id: Mapped[str | None] = mapped_column(String(40))  # the one that got the 410


# --- dashboard ------------------------------------------------------------------------------


class DashboardSession(Base):
    """A signed-in operator. The cookie holds a random id; only its SHA-256 is stored, so a
    leaked table opens nothing. `key_id` None is the settings' admin key. `key_fingerprint`
    is an HMAC of the key it was opened with (db/dashboard.py): a session ends with its key,
    revoked or replaced (a new DAIKON_ADMIN_KEY)."""

    __tablename__ = "dashboard_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    actor: Mapped[str] = mapped_column(String(255))  # who, as the audit log names them
    scope: Mapped[KeyScope] = mapped_column(
        Enum(KeyScope, native_enum=False, length=16, create_constraint=True, name="session_scope"),
    )
    key_fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # What the last action said, shown once on the next page (never text from a URL).
    notice: Mapped[str | None] = mapped_column(String(512))


class AuditEntry(Base):
    """One admin action: who (a key's id and prefix, never the key), what, on what, when."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(255))
    key_id: Mapped[str | None] = mapped_column(String(36))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class PausedModel(Base):
    """A model whose queue is paused: its queued jobs stay queued, workers start none."""

    __tablename__ = "paused_models"

    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    paused_by: Mapped[str] = mapped_column(String(255), default="")


# --- retention ------------------------------------------------------------------------------


class PendingDeletion(Base):
    """A storage object whose job rows are gone and that is yet to be deleted. Written in the
    transaction that deletes the rows, removed once the object is: a crash between the two
    leaves this row, and the next sweep deletes the object (db/retention.py)."""

    __tablename__ = "pending_deletions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(1024))
    job_id: Mapped[str] = mapped_column(String(36))  # no foreign key: that row is gone
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Not before then: an API process may answer a poll of the job from memory for a while
    # after its row is gone (api/caches.py), and what it answers must still be there.
    delete_after: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
