"""/v1/admin: tenants, their limits and their API keys. Admin keys only."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from api import openapi
from api.auth import keys_changed, require_admin
from api.bodies import json_body
from api.services import services
from daikon.errors import InvalidRequest
from daikon.resources import (
    KeyCreate,
    KeyList,
    KeyOut,
    NewKeyOut,
    TenantCreate,
    TenantLimitsIn,
    TenantLimitsOut,
    TenantList,
    TenantOut,
)
from db import tenants
from db.models import ApiKey, Tenant
from db.session import session_scope

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


TENANT_LINKS = {
    "create_key": openapi.Link("admin.create_key", {"tenant_id": "$response.body#/id"}),
    "list_keys": openapi.Link("admin.list_keys", {"tenant_id": "$response.body#/id"}),
}
KEY_LINKS = {"revoke": openapi.Link("admin.revoke_key", {"key_id": "$response.body#/id"})}


def tenant_out(t: Tenant) -> TenantOut:
    return TenantOut(id=t.id, name=t.name, created_at=t.created_at)


def key_out(k: ApiKey) -> dict[str, Any]:
    return KeyOut(
        id=k.id,
        tenant_id=k.tenant_id,
        name=k.name,
        prefix=k.prefix,
        admin=k.is_admin,
        scope=k.scope,
        created_at=k.created_at,
        revoked_at=k.revoked_at,
    ).model_dump(mode="json")


@bp.post("/tenants")
@openapi.operation(
    "Create a tenant",
    tags=["admin"],
    auth="admin",
    body=TenantCreate,
    responses={201: openapi.Reply("Created.", TenantOut, links=TENANT_LINKS)},
    errors={409: "`tenant_exists`: a tenant has this name."},
)
def create_tenant() -> Any:
    require_admin()
    body = TenantCreate.model_validate(json_body())
    with session_scope(services().sessions) as session:
        tenant = tenants.create_tenant(session=session, name=body.name)
        return tenant_out(tenant).model_dump(mode="json"), 201


@bp.get("/tenants")
@openapi.operation("List tenants", tags=["admin"], auth="admin", responses={200: TenantList})
def list_tenants() -> Any:
    require_admin()
    with session_scope(services().sessions) as session:
        rows = tenants.list_tenants(session=session)
        return TenantList(tenants=[tenant_out(t) for t in rows]).model_dump(mode="json")


def limits_out(t: Tenant) -> dict[str, Any]:
    own = tenants.limits_of(t)
    return TenantLimitsOut(tenant_id=t.id, **vars(own)).model_dump(mode="json")


@bp.get("/tenants/<tenant_id>/limits")
@openapi.operation(
    "A tenant's limits", tags=["admin"], auth="admin", responses={200: TenantLimitsOut}
)
def get_limits(tenant_id: str) -> Any:
    require_admin()
    with session_scope(services().sessions) as session:
        return limits_out(tenants.get_tenant(session=session, tenant_id=tenant_id))


@bp.put("/tenants/<tenant_id>/limits")
@openapi.operation(
    "Set a tenant's limits",
    tags=["admin"],
    auth="admin",
    body=TenantLimitsIn,
    responses={200: TenantLimitsOut},
    errors={
        503: "`revocation_not_propagated`: saved, but Redis could not tell every API "
        "process; retry until 200."
    },
)
def set_limits(tenant_id: str) -> Any:
    """Every limit at once (as the dashboard's tenant page sets them): null = the
    deployment's. Applies from every API process's next request."""
    require_admin()
    svc = services()
    body = TenantLimitsIn.model_validate(json_body())
    most = svc.settings.limits.max_candidates
    if body.max_candidates is not None and body.max_candidates > most:
        raise InvalidRequest(
            f"max_candidates: {body.max_candidates} is more than the deployment's {most}",
            param="max_candidates",
        )
    limits = tenants.TenantLimits(**body.model_dump())
    with session_scope(svc.sessions) as session:
        out = limits_out(tenants.set_limits(session=session, tenant_id=tenant_id, limits=limits))
    keys_changed(svc)  # cached principals carry the limits
    return out


@bp.post("/tenants/<tenant_id>/keys")
@openapi.operation(
    "Create an API key",
    tags=["admin"],
    auth="admin",
    body=KeyCreate,
    responses={
        201: openapi.Reply(
            "Created: the only response that shows the key.", NewKeyOut, links=KEY_LINKS
        )
    },
)
def create_key(tenant_id: str) -> Any:
    require_admin()
    body = KeyCreate.model_validate(json_body())
    with session_scope(services().sessions) as session:
        new = tenants.create_key(
            session=session,
            tenant_id=tenant_id,
            name=body.name,
            admin=body.admin,
            scope=body.scope,
        )
        return {**key_out(new.key), "key": new.secret}, 201


@bp.get("/tenants/<tenant_id>/keys")
@openapi.operation(
    "List a tenant's API keys", tags=["admin"], auth="admin", responses={200: KeyList}
)
def list_keys(tenant_id: str) -> Any:
    require_admin()
    with session_scope(services().sessions) as session:
        tenants.get_tenant(session=session, tenant_id=tenant_id)
        return {
            "keys": [key_out(k) for k in tenants.list_keys(session=session, tenant_id=tenant_id)]
        }


@bp.delete("/keys/<key_id>")
@openapi.operation(
    "Revoke an API key",
    tags=["admin"],
    auth="admin",
    responses={200: openapi.Reply("The key, revoked (again: no change).", KeyOut)},
    errors={
        503: "`revocation_not_propagated`: revoked, but Redis could not carry the news to "
        "every API process; retry until 200. `database_unavailable`: the database cannot be "
        "reached; retry shortly."
    },
)
def revoke_key(key_id: str) -> Any:
    require_admin()
    svc = services()
    with session_scope(svc.sessions) as session:
        out = key_out(tenants.revoke_key(session=session, key_id=key_id))
    keys_changed(svc)  # after the commit, before answering
    return out
