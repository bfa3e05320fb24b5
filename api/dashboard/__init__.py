"""/admin: the operators' dashboard, server-rendered (Jinja templates in api/templates/admin,
one small script in api/static/dashboard). Pages read through db/ service functions; every
action goes through the same functions as the API (cancel, publish, redeliver, rotate) and is
written to the audit log in the transaction that makes it.

One module per page (signin, overview, jobs, queues, tenants, usage, audit); the blueprint, the
sign-in check and the shared helpers live in common.py. Importing the page modules here
registers their routes on `bp` before the app registers the blueprint."""

from __future__ import annotations

from api.dashboard import audit, jobs, overview, queues, signin, tenants, usage
from api.dashboard.common import bp

__all__ = ["audit", "bp", "jobs", "overview", "queues", "signin", "tenants", "usage"]
