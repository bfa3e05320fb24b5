"""Bearer-key authentication. The key is looked up by its hash on every request, so a revoked
key stops working at once; the admin key from settings is compared in constant time."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from flask import g, request

from api.services import services
from daikon.errors import Forbidden, Unauthenticated
from db import tenants
from db.session import session_scope

ADMIN_TENANT = "admin"


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    is_admin: bool
    key_id: str | None  # None for the settings' admin key


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
            principal = Principal(tenant_id=key.tenant_id, is_admin=key.is_admin, key_id=key.id)
    g.principal = principal
    return principal


def require_admin() -> Principal:
    principal = authenticate()
    if not principal.is_admin:
        raise Forbidden("this endpoint needs an admin key")
    return principal
