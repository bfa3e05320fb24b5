"""The audit log: every sign-in and action, newest first, paged by entry number."""

from __future__ import annotations

from flask import Response, request, url_for

from api import openapi
from api.dashboard.common import PAGE, bp, render
from api.services import services
from daikon.errors import InvalidRequest
from db import dashboard
from db.session import session_scope


@bp.get("/audit")
@openapi.hidden
def audit_page() -> Response:
    raw = request.args.get("before", "").strip()
    before = None
    if raw:
        # The log's ids are 32-bit on PostgreSQL (a larger number is a database error there).
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) < 2**31):
            raise InvalidRequest(
                f"before: {raw[:40]!r} is not an entry number of this log", param="before"
            )
        before = int(raw)
    with session_scope(services().sessions) as session:
        rows = list(dashboard.audit_log(session=session, limit=PAGE + 1, before_id=before))
    page, more = rows[:PAGE], len(rows) > PAGE
    return render(
        "audit.html",
        rows=page,
        next_url=url_for("dashboard.audit_page", before=page[-1].id) if more else None,
    )
