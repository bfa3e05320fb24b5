"""/v1/usage: what the caller's tenant keeps stored, its storage quota and the retention
periods; and the admin's setting of a tenant's quota."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from api import openapi
from api.auth import authenticate, require_admin
from api.bodies import json_body
from api.services import services
from daikon.resources import RetentionOut, StorageQuotaSet, UsageOut
from db import retention, tenants
from db.session import session_scope
from server.settings import Settings

bp = Blueprint("usage", __name__, url_prefix="/v1")


def usage_out(found: retention.StorageUsage, settings: Settings) -> dict[str, Any]:
    hours = settings.retention
    return UsageOut(
        tenant_id=found.tenant_id,
        stored_bytes=found.stored_bytes,
        storage_quota_bytes=found.quota_bytes,
        own_quota=found.own_quota,
        retention=RetentionOut(
            canceled_hours=hours.retain_canceled_hours or None,
            failed_hours=hours.retain_failed_hours or None,
            succeeded_hours=hours.retain_succeeded_hours or None,
        ),
    ).model_dump(mode="json")


@bp.get("/usage")
@openapi.operation("This tenant's storage and quota", tags=["usage"], responses={200: UsageOut})
def get_usage() -> Any:
    """Bytes stored (edit inputs and output images, counted when recorded and uncounted when
    retention deletes them), the storage quota, and how long ended jobs are kept."""
    principal = authenticate()
    svc = services()
    with session_scope(svc.sessions) as session:
        found = retention.usage(
            session=session,
            tenant_id=principal.tenant_id,
            default_quota=svc.settings.limits.tenant_storage_quota_bytes,
        )
    return usage_out(found, svc.settings)


@bp.put("/admin/tenants/<tenant_id>/storage-quota")
@openapi.operation(
    "Set a tenant's storage quota",
    tags=["admin"],
    auth="admin",
    body=StorageQuotaSet,
    responses={200: openapi.Reply("The tenant's usage under its new quota.", UsageOut)},
)
def set_storage_quota(tenant_id: str) -> Any:
    """Takes effect at the tenant's next submission (it is read from the database each time,
    never cached)."""
    require_admin()
    body = StorageQuotaSet.model_validate(json_body())
    svc = services()
    with session_scope(svc.sessions) as session:
        tenants.get_tenant(session=session, tenant_id=tenant_id)
        retention.set_quota(
            session=session, tenant_id=tenant_id, quota_bytes=body.storage_quota_bytes
        )
        found = retention.usage(
            session=session,
            tenant_id=tenant_id,
            default_quota=svc.settings.limits.tenant_storage_quota_bytes,
        )
    return usage_out(found, svc.settings)
