"""Bearer-key authentication. A key is looked up by its hash, through a per-process cache that
every revocation or change of a tenant's limits empties in all processes before its response
(`keys_changed`, api/caches.py), so a revoked key stops working at once; the admin key from
settings is compared in constant time."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import redis
from flask import g, request
from sqlalchemy.orm import Session

from api.services import Services, services
from daikon.errors import Forbidden, RequestErrorCode, ServiceUnavailable, Unauthenticated
from daikon.resources import ADMIN_TENANT
from db import tenants
from db.models import ApiKey, KeyScope
from db.session import session_scope


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    is_admin: bool
    key_id: str | None  # None for the settings' admin key
    scope: KeyScope
    limits: tenants.TenantLimits  # the tenant's own, as they were when the key was looked up


@dataclass(frozen=True)
class KeyHolder:
    """Who a key belongs to, as the dashboard's sign-in sees it."""

    key_id: str | None
    scope: KeyScope
    actor: str  # how the audit log names them: a key's prefix and name, never the key


def actor_name(key: ApiKey | None) -> str:
    if key is None:
        return "admin key (settings)"
    return f"key {key.prefix}… {key.name}".rstrip() + f" ({key.tenant.name})"


def identify(session: Session, token: str) -> KeyHolder | None:
    """The holder of a key, or None if it is unknown or revoked."""
    admin = services().settings.security.admin_key
    # As bytes: compare_digest refuses str with non-ASCII characters (TypeError).
    if admin is not None and hmac.compare_digest(token.encode(), admin.get_secret_value().encode()):
        return KeyHolder(None, KeyScope.admin, actor_name(None))
    key = tenants.find_active_key(session=session, secret=token)
    if key is None:
        return None
    return KeyHolder(key.id, key.scope, actor_name(key))


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    return token.strip()


def authenticate() -> Principal:
    """The caller, from the Authorization header (cached on flask.g for the request)."""
    cached = g.get("principal")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    token = _bearer()
    svc = services()
    admin = svc.settings.security.admin_key
    # As bytes: compare_digest refuses str with non-ASCII characters (TypeError).
    is_admin_key = admin is not None and hmac.compare_digest(
        token.encode(), admin.get_secret_value().encode()
    )
    # The settings' key has no row: its entry is filed under its tenant's name (no key hash
    # is that short), and changes of that tenant's limits move the generation as well.
    digest = ADMIN_TENANT if is_admin_key else tenants.hash_key(token)
    generation = svc.keys.generation()  # before the database read (api/caches.py)
    principal = svc.keys.get(digest, generation)
    if principal is None:
        with session_scope(svc.sessions) as session:
            if is_admin_key:
                tenant = tenants.get_or_create_tenant(session=session, name=ADMIN_TENANT)
                principal = Principal(
                    tenant_id=tenant.id,
                    is_admin=True,
                    key_id=None,
                    scope=KeyScope.admin,
                    limits=tenants.limits_of(tenant),
                )
            else:
                key = tenants.find_active_key(session=session, key_hash=digest)
                if key is None:
                    raise Unauthenticated("invalid or revoked API key")
                principal = Principal(
                    tenant_id=key.tenant_id,
                    is_admin=key.is_admin,
                    key_id=key.id,
                    scope=key.scope,
                    limits=tenants.limits_of(key.tenant),
                )
        svc.keys.put(digest, generation, principal)
    if principal.scope is KeyScope.operator:
        raise Forbidden("an operator key is read-only and for the dashboard (/admin) only")
    g.principal = principal
    return principal


def keys_changed(svc: Services) -> None:
    """After the commit of anything a cached Principal carries (a key revoked, a tenant's
    limits), before answering: every API process's next request looks its key up again.
    503 `revocation_not_propagated` when Redis cannot carry the news (retry until 200)."""
    try:
        svc.keys.invalidate_everywhere()
    except redis.RedisError as e:
        raise ServiceUnavailable(
            "the change is saved, but the API processes could not be told (Redis is "
            f"unreachable): they may go on with what they cached for up to a minute; retry ({e})",
            code=RequestErrorCode.revocation_not_propagated,
        ) from e


def authenticate_in_read() -> tuple[Principal, str | None]:
    """For a request whose one database read can also check the key (a status poll): the
    caller from this process's key cache without asking Redis, and the key id the read must
    find unrevoked (`check_key`); None when nothing is left to check. A key not in the cache
    is looked up as by `authenticate`."""
    cached = g.get("principal")
    if cached is not None:
        return cached, None
    svc = services()
    token = _bearer()
    admin = svc.settings.security.admin_key
    if admin is None or not hmac.compare_digest(token.encode(), admin.get_secret_value().encode()):
        principal = svc.keys.peek(tenants.hash_key(token))
        # An operator key is refused by `authenticate`, the ordinary way.
        usable = principal is not None and principal.scope is not KeyScope.operator
        if principal is not None and usable and principal.key_id is not None:
            return principal, principal.key_id
    return authenticate(), None


def check_key(key_id: str | None, active: bool | None) -> None:
    """What the read found about the key `authenticate_in_read` left to check."""
    if key_id is not None and not active:
        raise Unauthenticated("invalid or revoked API key")


def require_admin() -> Principal:
    principal = authenticate()
    if not principal.is_admin:
        raise Forbidden("this endpoint needs an admin key")
    return principal
