"""Usage per tenant over a period (jobs, images kept, worker seconds) beside the bytes each
tenant stores now and its quota."""

from __future__ import annotations

from datetime import timedelta

from flask import Response

from api import openapi
from api.dashboard.common import bp, date_arg, now, render
from api.services import services
from daikon.errors import InvalidRequest
from db import dashboard, retention
from db.session import session_scope


@bp.get("/usage")
@openapi.hidden
def usage_page() -> Response:
    until = date_arg("to") or now()
    since = date_arg("from") or until - timedelta(days=1)
    if since >= until:
        raise InvalidRequest("from: must be before to", param="from")
    with session_scope(services().sessions) as session:
        rows = dashboard.usage(session=session, since=since, until=until)
        storage = retention.usage_by_tenant(
            session=session, default_quota=services().settings.limits.tenant_storage_quota_bytes
        )
    return render("usage.html", rows=rows, since=since, until=until, storage=storage)
