"""Tenants and their keys: create a tenant, issue and revoke keys (a new key is shown once),
rotate the webhook secret, set a tenant's limits and storage quota."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Response, request
from werkzeug.wrappers import Response as BaseResponse

from api import openapi
from api.auth import ADMIN_TENANT, keys_changed
from api.dashboard.common import audit_action, back, bp, render
from api.services import services
from daikon.contract import DEFAULT_PRIORITY, PRIORITY_MAX
from daikon.errors import InvalidRequest
from db import deliveries, retention, tenants
from db.models import KeyScope
from db.session import session_scope


@bp.get("/tenants")
@openapi.hidden
def tenants_page() -> Response:
    with session_scope(services().sessions) as session:
        rows = [
            (t, tenants.list_keys(session=session, tenant_id=t.id))
            for t in tenants.list_tenants(session=session)
        ]
    return render("tenants.html", rows=rows)


@bp.post("/tenants")
@openapi.hidden
def create_tenant() -> BaseResponse:
    from api.admin import TenantCreate

    body = TenantCreate.model_validate({"name": request.form.get("name", "")})
    with session_scope(services().sessions) as session:
        tenant = tenants.create_tenant(session=session, name=body.name)
        tenant_id = tenant.id
        audit_action(session, "tenant.create", tenant_id, name=body.name)
    return back("dashboard.tenant_page", f"Tenant {body.name} created.", tenant_id=tenant_id)


def _tenant_context(session: Any, tenant_id: str) -> dict[str, Any]:
    settings = services().settings
    tenant = tenants.get_tenant(session=session, tenant_id=tenant_id)
    return {
        "tenant": tenant,
        "keys": tenants.list_keys(session=session, tenant_id=tenant_id),
        "scopes": list(KeyScope),
        "defaults": {
            "submits_per_minute": settings.limits.tenant_submits_per_minute,
            "max_active_jobs": settings.limits.tenant_max_active_jobs,
            "max_candidates": settings.limits.max_candidates,
            "storage_quota_bytes": settings.limits.tenant_storage_quota_bytes,
            # The admin tenant's (the settings' admin key) default is every priority.
            "max_priority": (
                PRIORITY_MAX if tenant.name == ADMIN_TENANT else settings.limits.tenant_max_priority
            ),
        },
        "storage": retention.usage(
            session=session,
            tenant_id=tenant_id,
            default_quota=settings.limits.tenant_storage_quota_bytes,
        ),
    }


@bp.get("/tenants/<tenant_id>")
@openapi.hidden
def tenant_page(tenant_id: str) -> Response:
    with session_scope(services().sessions) as session:
        return render("tenant.html", **_tenant_context(session, tenant_id))


@bp.post("/tenants/<tenant_id>/keys")
@openapi.hidden
def create_key(tenant_id: str) -> Response:
    """The new key is shown on this page once, never again (and never put in a URL)."""
    try:
        scope = KeyScope(request.form.get("scope", "tenant"))
    except ValueError:
        raise InvalidRequest("scope: not tenant, admin or operator", param="scope") from None
    name = request.form.get("name", "")[:128]
    with session_scope(services().sessions) as session:
        new = tenants.create_key(session=session, tenant_id=tenant_id, name=name, scope=scope)
        audit_action(
            session,
            "key.create",
            new.key.id,
            tenant=tenant_id,
            prefix=new.key.prefix,
            scope=scope.value,
        )
        return render("tenant.html", 201, new_key=new.secret, **_tenant_context(session, tenant_id))


@bp.post("/keys/<key_id>/revoke")
@openapi.hidden
def revoke_key(key_id: str) -> BaseResponse:
    with session_scope(services().sessions) as session:
        key = tenants.revoke_key(session=session, key_id=key_id)
        tenant_id = key.tenant_id
        audit_action(session, "key.revoke", key_id, tenant=tenant_id, prefix=key.prefix)
    keys_changed(services())  # every API process refuses it from its next request on
    return back("dashboard.tenant_page", f"Key {key.prefix}… revoked.", tenant_id=tenant_id)


@bp.post("/tenants/<tenant_id>/webhook-secret")
@openapi.hidden
def rotate_secret(tenant_id: str) -> Response:
    svc = services()
    hours = svc.settings.webhooks.webhook_secret_overlap_hours
    with session_scope(svc.sessions) as session:
        tenants.get_tenant(session=session, tenant_id=tenant_id)
        made = deliveries.rotate_secret(
            session=session, tenant_id=tenant_id, overlap=timedelta(hours=hours), cipher=svc.cipher
        )
        audit_action(session, "webhook_secret.rotate", tenant_id, overlap_hours=hours)
        return render(
            "tenant.html", 201, new_secret=made.secret, **_tenant_context(session, tenant_id)
        )


def _limit(name: str, most: int, least: int = 1) -> int | None:
    raw = request.form.get(name, "").strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or not least <= int(raw) <= most:
        raise InvalidRequest(
            f"{name}: {raw!r} is not a whole number from {least} to {most}", param=name
        )
    return int(raw)


@bp.post("/tenants/<tenant_id>/limits")
@openapi.hidden
def set_limits(tenant_id: str) -> BaseResponse:
    settings = services().settings
    limits = tenants.TenantLimits(
        submits_per_minute=_limit("submits_per_minute", 1_000_000),
        max_active_jobs=_limit("max_active_jobs", 1_000_000),
        max_candidates=_limit("max_candidates", settings.limits.max_candidates),
        max_priority=_limit("max_priority", PRIORITY_MAX, DEFAULT_PRIORITY),
    )
    with session_scope(services().sessions) as session:
        tenants.set_limits(session=session, tenant_id=tenant_id, limits=limits)
        audit_action(session, "tenant.limits", tenant_id, **vars(limits))
    keys_changed(services())  # cached principals carry the limits
    return back("dashboard.tenant_page", "Limits saved.", tenant_id=tenant_id)


@bp.post("/tenants/<tenant_id>/storage-quota")
@openapi.hidden
def set_storage_quota(tenant_id: str) -> BaseResponse:
    """Read at each submission (never cached), so no process needs telling."""
    quota = _limit("storage_quota_bytes", 2**62)
    with session_scope(services().sessions) as session:
        retention.set_quota(session=session, tenant_id=tenant_id, quota_bytes=quota)
        audit_action(session, "tenant.storage_quota", tenant_id, storage_quota_bytes=quota)
    return back("dashboard.tenant_page", "Storage quota saved.", tenant_id=tenant_id)
