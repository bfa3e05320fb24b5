"""Keys and tenants: who may call what, and that a tenant never sees another's jobs."""

from __future__ import annotations

import io
import time

import pytest
from flask import Flask
from PIL import Image
from sqlalchemy import select

from db import jobs, tenants
from db.models import ApiKey
from db.session import session_scope
from server import image_urls
from tests.apps import new_tenant
from tests.conftest import ADMIN_KEY, authed
from tests.factories import image

BODY = {"prompt": "a red circle", "steps": 2, "candidates": 1, "top_k": 1}


@pytest.fixture
def app(make_app) -> Flask:  # type: ignore[no-untyped-def]
    return make_app()


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic dXNlcjpwdw==", "Bearer "])
def test_v1_needs_a_valid_bearer_key(app: Flask, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    r = app.test_client().get("/v1/jobs", headers=headers)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="daikon"'
    assert r.get_json()["error"]["type"] == "authentication_error"
    assert app.test_client().get("/healthz").status_code == 200  # liveness stays open


def test_admin_creates_tenants_and_a_key_is_shown_only_once(app: Flask) -> None:
    tenant_id, created = new_tenant(app, "acme")
    secret = created["key"]
    assert secret.startswith("dk_") and created["prefix"] == secret[:10]
    assert created["admin"] is False and created["revoked_at"] is None
    root = authed(app, ADMIN_KEY)
    listed = root.get(f"/v1/admin/tenants/{tenant_id}/keys").get_json()["keys"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0]
    assert "acme" in [t["name"] for t in root.get("/v1/admin/tenants").get_json()["tenants"]]
    # Only a hash is stored: the clear key is in no column of the row.
    with session_scope(app.extensions["daikon"].sessions) as s:
        row = s.scalars(select(ApiKey).where(ApiKey.id == created["id"])).one()
        assert row.key_hash == tenants.hash_key(secret)
        assert secret not in repr([getattr(row, c.key) for c in ApiKey.__table__.columns])
    assert authed(app, secret).get("/v1/jobs").status_code == 200


def test_admin_input_errors(app: Flask) -> None:
    root = authed(app, ADMIN_KEY)
    new_tenant(app, "dupe")
    r = root.post("/v1/admin/tenants", json={"name": "dupe"})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "tenant_exists"
    r = root.post("/v1/admin/tenants", json={"name": ""})
    assert r.status_code == 422 and r.get_json()["error"]["param"] == "name"
    r = root.post("/v1/admin/tenants/nope/keys", json={})
    assert r.status_code == 404
    assert root.delete("/v1/admin/keys/nope").status_code == 404


def test_tenant_keys_get_403_on_admin_endpoints(app: Flask) -> None:
    _, key = new_tenant(app, "plain")
    c = authed(app, key["key"])
    for method, path in [
        ("get", "/v1/admin/tenants"),
        ("post", "/v1/admin/tenants"),
        ("delete", f"/v1/admin/keys/{key['id']}"),
    ]:
        r = getattr(c, method)(path, json={"name": "x"} if method == "post" else None)
        assert r.status_code == 403 and r.get_json()["error"]["type"] == "permission_error"
    _, admin_key = new_tenant(app, "ops", admin=True)
    assert authed(app, admin_key["key"]).get("/v1/admin/tenants").status_code == 200


def test_a_tenant_sees_and_touches_only_its_own_jobs(app: Flask) -> None:
    _, a = new_tenant(app, "tenant-a")
    _, b = new_tenant(app, "tenant-b")
    alice, bob = authed(app, a["key"]), authed(app, b["key"])
    job = alice.post("/v1/jobs", json=BODY).get_json()
    for path, method in [
        (f"/v1/jobs/{job['id']}", "get"),
        (f"/v1/jobs/{job['id']}/cancel", "post"),
        (f"/v1/jobs/{job['id']}/events", "get"),
    ]:
        r = getattr(bob, method)(path)
        assert r.status_code == 404, path
        assert r.get_json()["error"]["message"] == f"job {job['id']!r} not found"
    assert bob.get("/v1/jobs").get_json()["jobs"] == []
    assert [j["id"] for j in alice.get("/v1/jobs").get_json()["jobs"]] == [job["id"]]
    assert alice.get(f"/v1/jobs/{job['id']}").get_json()["status"] == "queued"  # bob's cancel
    # did nothing


def test_a_revoked_key_stops_working_at_once(app: Flask) -> None:
    tenant_id, first = new_tenant(app, "rev")
    second = authed(app, ADMIN_KEY).post(f"/v1/admin/tenants/{tenant_id}/keys", json={})
    assert authed(app, first["key"]).get("/v1/jobs").status_code == 200
    r = authed(app, ADMIN_KEY).delete(f"/v1/admin/keys/{first['id']}")
    assert r.status_code == 200 and r.get_json()["revoked_at"] is not None
    assert authed(app, first["key"]).get("/v1/jobs").status_code == 401
    assert authed(app, second.get_json()["key"]).get("/v1/jobs").status_code == 200


def test_image_urls_are_signed_and_open_only_with_their_signature(app: Flask) -> None:
    svc = app.extensions["daikon"]
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(png, format="PNG")
    _, key = new_tenant(app, "pics")
    owner = authed(app, key["key"])
    job_id = owner.post("/v1/jobs", json=BODY).get_json()["id"]
    svc.store.put(f"{job_id}/rank-1.png", png.getvalue(), "image/png")
    with session_scope(svc.sessions) as s:
        jobs.claim(session=s, job_id=job_id, worker="w")
        stored = image(1, 30.0)
        jobs.succeed(
            session=s,
            job_id=job_id,
            seed=7,
            metrics={},
            images=[jobs.NewImage(**{**vars(stored), "storage_key": f"{job_id}/rank-1.png"})],
        )
    url = owner.get(f"/v1/jobs/{job_id}").get_json()["images"][0]["url"]
    path = url.removeprefix("http://localhost")
    anonymous = app.test_client()
    r = anonymous.get(path)
    assert r.status_code == 200 and r.data == png.getvalue() and r.mimetype == "image/png"
    unsigned = path.split("?")[0]
    assert anonymous.get(unsigned).status_code == 404
    assert anonymous.get(path.replace("sig=", "sig=x")).status_code == 404
    assert anonymous.get(path.replace("/images/1?", "/images/2?")).status_code == 404
    past = int(time.time()) - 10
    stale_sig = image_urls._mac(svc.signing_key, job_id, 1, past)
    assert anonymous.get(f"{unsigned}?expires={past}&sig={stale_sig}").status_code == 404
