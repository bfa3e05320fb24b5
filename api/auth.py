"""Bearer-key authentication. The key is looked up by its hash on every request, so a revoked
key stops working at once; the admin key from settings is compared in constant time."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from flask import g, request
from sqlalchemy.orm import Session

from api.services import services
from daikon.errors import Forbidden, Unauthenticated
from db import tenants
from db.models import ApiKey, KeyScope
from db.session import session_scope

ADMIN_TENANT = "admin"


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    is_admin: bool
    key_id: str | None  # None for the settings' admin key


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
    with session_scope(svc.sessions) as session:
        # As bytes: compare_digest refuses str with non-ASCII characters (TypeError).
        if admin is not None and hmac.compare_digest(
            token.encode(), admin.get_secret_value().encode()
        ):
            tenant = tenants.get_or_create_tenant(session=session, name=ADMIN_TENANT)
            principal = Principal(tenant_id=tenant.id, is_admin=True, key_id=None)
        else:
            key = tenants.find_active_key(session=session, secret=token)
            if key is None:
                raise Unauthenticated("invalid or revoked API key")
            if key.scope is KeyScope.operator:
                raise Forbidden("an operator key is read-only and for the dashboard (/admin) only")
            principal = Principal(tenant_id=key.tenant_id, is_admin=key.is_admin, key_id=key.id)
    g.principal = principal
    return principal


def require_admin() -> Principal:
    principal = authenticate()
    if not principal.is_admin:
        raise Forbidden("this endpoint needs an admin key")
    return principal
