"""Tenants and their API keys. A key is returned in clear only by `create_key`, once."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from daikon.errors import Conflict, NotFound, RequestErrorCode
from db.models import ApiKey, KeyScope, Tenant, utcnow

KEY_PREFIX = "dk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    secret: str  # the only time the clear key exists outside the client


def create_tenant(*, session: Session, name: str) -> Tenant:
    tenant = Tenant(name=name)
    try:
        with session.begin_nested():
            session.add(tenant)
    except IntegrityError as e:
        raise Conflict(
            f"a tenant named {name!r} exists", param="name", code=RequestErrorCode.tenant_exists
        ) from e
    return tenant


def get_or_create_tenant(*, session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is not None:
        return tenant
    try:
        return create_tenant(session=session, name=name)
    except Conflict:  # created concurrently
        return session.scalars(select(Tenant).where(Tenant.name == name)).one()


def get_tenant(*, session: Session, tenant_id: str) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id!r} not found", param="id")
    return tenant


def list_tenants(*, session: Session) -> Sequence[Tenant]:
    return session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id)).all()


def create_key(
    *,
    session: Session,
    tenant_id: str,
    name: str = "",
    admin: bool = False,
    scope: KeyScope | None = None,
) -> NewKey:
    """`scope` wins over `admin` (kept for callers of the first API); admin=True = admin."""
    get_tenant(session=session, tenant_id=tenant_id)
    scope = scope or (KeyScope.admin if admin else KeyScope.tenant)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        tenant_id=tenant_id,
        name=name,
        prefix=secret[:10],
        key_hash=hash_key(secret),
        is_admin=scope is KeyScope.admin,
        scope=scope,
    )
    session.add(key)
    session.flush()
    return NewKey(key=key, secret=secret)


def find_active_key(
    *, session: Session, secret: str | None = None, key_hash: str | None = None
) -> ApiKey | None:
    """The unrevoked key with this secret (or this secret's hash, when the caller has it), its
    tenant loaded with it (one query: a principal carries the tenant's limits)."""
    digest = key_hash if key_hash is not None else hash_key(secret or "")
    return session.scalar(
        select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    )


def list_keys(*, session: Session, tenant_id: str) -> Sequence[ApiKey]:
    return session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
    ).all()


def get_key(*, session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"key {key_id!r} not found", param="id")
    return key


@dataclass(frozen=True)
class TenantLimits:
    """A tenant's own limits; None = the deployment's."""

    submits_per_minute: int | None = None
    max_active_jobs: int | None = None
    max_candidates: int | None = None
    max_priority: int | None = None


def limits_of(tenant: Tenant) -> TenantLimits:
    return TenantLimits(
        submits_per_minute=tenant.submits_per_minute,
        max_active_jobs=tenant.max_active_jobs,
        max_candidates=tenant.max_candidates,
        max_priority=tenant.max_priority,
    )


def set_limits(*, session: Session, tenant_id: str, limits: TenantLimits) -> Tenant:
    tenant = get_tenant(session=session, tenant_id=tenant_id)
    tenant.submits_per_minute = limits.submits_per_minute
    tenant.max_active_jobs = limits.max_active_jobs
    tenant.max_candidates = limits.max_candidates
    tenant.max_priority = limits.max_priority
    session.flush()
    return tenant


def revoke_key(*, session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"key {key_id!r} not found", param="id")
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    session.refresh(key)
    return key
