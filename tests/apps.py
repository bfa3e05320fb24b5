"""Helpers for driving an in-process API app (Flask's test client on the real databases and
Redis): keyed clients, tenants and keys, dashboard sign-in, and what a submit left behind in
the database and the broker. Shared by the api, worker and db tests."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from db.models import Job
from db.session import session_scope
from tests.stack import ADMIN_KEY

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def authed(app: Flask, key: str | None = ADMIN_KEY) -> FlaskClient:
    """A test client that sends `key` as its Bearer key (none when `key` is None)."""
    client = app.test_client()
    if key is not None:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


def new_tenant(app: Flask, name: str, *, admin: bool = False) -> tuple[str, dict[str, Any]]:
    root = authed(app, ADMIN_KEY)
    tenant = root.post("/v1/admin/tenants", json={"name": name})
    assert tenant.status_code == 201, tenant.get_json()
    key = root.post(
        f"/v1/admin/tenants/{tenant.get_json()['id']}/keys", json={"name": "ci", "admin": admin}
    )
    assert key.status_code == 201
    return tenant.get_json()["id"], key.get_json()


# --- what a submit left behind ----------------------------------------------------------------


def job_count(app: Flask) -> int:
    with session_scope(app.extensions["daikon"].sessions) as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def queued_messages(redis_client: redis.Redis, queue: str) -> list[tuple[str, str, int]]:
    """(Redis list, job id, Celery priority) of every message published under this queue
    prefix: one list per model, and per priority level within it."""
    found = []
    for key in sorted(k.decode() for k in redis_client.scan_iter(f"{queue}*")):
        for raw in redis_client.lrange(key, 0, -1):
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.extend((key, a, message["properties"]["priority"]) for a in args)
    return found


def queued_job_ids(redis_client: redis.Redis, queue: str) -> list[str]:
    return [job_id for _key, job_id, _prio in queued_messages(redis_client, queue)]


# --- the dashboard ----------------------------------------------------------------------------


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, html
    return match.group(1)


def login(app: Flask, key: str = ADMIN_KEY) -> tuple[FlaskClient, str]:
    """A browser-like client signed in with `key`; and its CSRF token."""
    client = app.test_client()
    form = client.get("/admin/login")
    r = client.post("/admin/login", data={"key": key, "csrf_token": csrf_of(form.text)})
    assert r.status_code == 303, r.text
    page = client.get("/admin/")
    assert page.status_code == 200
    return client, csrf_of(page.text)


def new_key(app: Flask, scope: str, tenant: str = "ops") -> dict[str, Any]:
    admin = authed(app)
    t = admin.post("/v1/admin/tenants", json={"name": tenant})
    tenant_id = (
        t.get_json()["id"]
        if t.status_code == 201
        else next(
            x["id"]
            for x in admin.get("/v1/admin/tenants").get_json()["tenants"]
            if x["name"] == tenant
        )
    )
    r = admin.post(f"/v1/admin/tenants/{tenant_id}/keys", json={"name": scope, "scope": scope})
    assert r.status_code == 201, r.text
    return dict(r.get_json())


def sessions_of(app: Flask) -> Any:
    return app.extensions["daikon"].sessions


def queued_job(app: Flask, **params: Any) -> str:
    r = authed(app).post("/v1/jobs", json={"prompt": "a red circle", "steps": 2, **params})
    assert r.status_code == 202, r.text
    return str(r.get_json()["id"])
