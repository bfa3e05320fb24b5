"""The admin dashboard through Flask's test client (real SQLite and Redis, no worker): sign-in,
sessions, CSRF, the read-only operator, the audit log, and what each action leaves behind.
Pausing is checked where it is enforced: the workers' claim (db/jobs.py), on both databases."""

from __future__ import annotations

import html
import io
import json
import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from daikon.contract import JobStatus
from db import dashboard, jobs
from db.models import AuditEntry, DashboardSession, Job, PausedModel, utcnow
from db.session import session_scope
from tests.apps import csrf_of, login, new_key, queued_job, sessions_of
from tests.conftest import authed
from tests.factories import make_job
from tests.stack import ADMIN_KEY


@pytest.fixture
def app(make_app: Any, queue_name: str) -> Flask:
    # Its own webhook queue too (removed with the test's queue): nobody else consumes it.
    return make_app(webhook_queue=f"{queue_name}-wh")  # type: ignore[no-any-return]


# --- sign-in and sessions -------------------------------------------------------------------


def test_pages_need_a_sign_in(app: Flask) -> None:
    client = app.test_client()
    r = client.get("/admin/jobs")
    assert r.status_code == 302 and r.headers["Location"].startswith("/admin/login")
    # A Bearer key is not a session: the dashboard needs its cookie.
    assert authed(app).get("/admin/jobs").status_code == 302
    assert client.post("/admin/queues/default/pause").status_code == 401


def test_login_exchanges_the_key_for_a_strict_httponly_session_cookie(app: Flask) -> None:
    client = app.test_client()
    form = client.get("/admin/login")
    r = client.post("/admin/login", data={"key": ADMIN_KEY, "csrf_token": csrf_of(form.text)})
    assert r.status_code == 303 and r.headers["Location"] == "/admin/"
    cookie = next(c for c in r.headers.getlist("Set-Cookie") if c.startswith("daikon_admin="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=43200" in cookie
    assert "Secure" not in cookie  # plain http here; https sets it (next test)
    token = cookie.split(";")[0].split("=", 1)[1]
    assert ADMIN_KEY not in cookie and len(token) >= 40
    with session_scope(sessions_of(app)) as s:
        (row,) = s.scalars(select(DashboardSession)).all()
        assert row.id_hash != token and len(row.id_hash) == 64  # only a hash is stored
        assert row.expires_at > utcnow() + timedelta(hours=11)
    page = client.get("/admin/")
    assert page.status_code == 200 and "Overview" in page.text
    assert ADMIN_KEY not in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_the_cookie_is_secure_over_https(make_app: Any) -> None:
    app = make_app(public_url="https://daikon.example")
    client = app.test_client()
    form = client.get("/admin/login")
    r = client.post("/admin/login", data={"key": ADMIN_KEY, "csrf_token": csrf_of(form.text)})
    cookie = next(c for c in r.headers.getlist("Set-Cookie") if c.startswith("daikon_admin="))
    assert "Secure" in cookie


def test_wrong_tenant_and_revoked_keys_cannot_sign_in(app: Flask) -> None:
    tenant_key = new_key(app, "tenant")
    operator = new_key(app, "operator")
    authed(app).delete(f"/v1/admin/keys/{operator['id']}")
    for key in ("dk_nope", tenant_key["key"], operator["key"]):
        client = app.test_client()
        form = client.get("/admin/login")
        r = client.post("/admin/login", data={"key": key, "csrf_token": csrf_of(form.text)})
        assert r.status_code == 401
        assert "not an admin or operator key" in r.text
        assert client.get("/admin/").status_code == 302
    with session_scope(sessions_of(app)) as s:
        assert s.scalars(select(DashboardSession)).all() == []


def test_the_login_form_needs_its_csrf_token(app: Flask) -> None:
    client = app.test_client()
    client.get("/admin/login")
    r = client.post("/admin/login", data={"key": ADMIN_KEY, "csrf_token": "forged"})
    assert r.status_code == 400 and "CSRF" in r.text
    fresh = app.test_client()  # no form fetched: no login cookie to match
    r = fresh.post("/admin/login", data={"key": ADMIN_KEY, "csrf_token": "x"})
    assert r.status_code == 400
    assert client.get("/admin/").status_code == 302


def test_login_attempts_are_rate_limited(make_app: Any) -> None:
    app = make_app(login_attempts_per_minute=3)
    client = app.test_client()
    token = csrf_of(client.get("/admin/login").text)
    codes = [
        client.post("/admin/login", data={"key": "dk_guess", "csrf_token": token}).status_code
        for _ in range(3)
    ]
    assert codes == [401, 401, 401]
    r = client.post("/admin/login", data={"key": ADMIN_KEY, "csrf_token": token})
    assert r.status_code == 429  # even the right key, until the minute ends
    assert 1 <= int(r.headers["Retry-After"]) <= 61
    assert "sign-in attempts" in r.text


def test_logout_ends_the_session_on_the_server(app: Flask) -> None:
    client, token = login(app)
    cookie = client.get_cookie("daikon_admin", path="/admin")
    assert cookie is not None
    r = client.post("/admin/logout", data={"csrf_token": token})
    assert r.status_code == 303
    with session_scope(sessions_of(app)) as s:
        assert s.scalars(select(DashboardSession)).all() == []
    replay = app.test_client()  # the old cookie, kept by someone: dead
    replay.set_cookie("daikon_admin", cookie.value, path="/admin")
    assert replay.get("/admin/").status_code == 302


def test_revoking_a_key_ends_its_sessions(app: Flask) -> None:
    key = new_key(app, "admin")
    client, _ = login(app, key["key"])
    assert client.get("/admin/jobs").status_code == 200
    authed(app).delete(f"/v1/admin/keys/{key['id']}")
    assert client.get("/admin/jobs").status_code == 302


# --- CSRF, the operator, the audit log ------------------------------------------------------


def test_a_form_posted_without_its_csrf_token_changes_nothing(app: Flask) -> None:
    client, token = login(app)
    for data in ({}, {"csrf_token": "0" * 64}):
        r = client.post("/admin/queues/default/pause", data=data)
        assert r.status_code == 400 and "CSRF token is missing or wrong" in r.text
    _other, other_token = login(app)  # a token is per session: another's does not pass
    assert other_token != token
    assert (
        client.post("/admin/queues/default/pause", data={"csrf_token": other_token}).status_code
        == 400
    )
    with session_scope(sessions_of(app)) as s:
        assert s.get(PausedModel, "default") is None
    r = client.post("/admin/queues/default/pause", data={"csrf_token": token})
    assert r.status_code == 303
    with session_scope(sessions_of(app)) as s:
        assert s.get(PausedModel, "default") is not None


def test_an_operator_sees_every_page_and_changes_nothing(app: Flask) -> None:
    operator = new_key(app, "operator")
    job_id = queued_job(app)
    client, token = login(app, operator["key"])
    pages = [
        "/admin/",
        "/admin/jobs",
        f"/admin/jobs/{job_id}",
        "/admin/queues",
        "/admin/tenants",
        "/admin/usage",
        "/admin/audit",
        "/admin/charts",
    ]
    for path in pages:
        r = client.get(path)
        assert r.status_code == 200, path
        # The one form an operator gets is "Sign out".
        assert r.text.count('method="post"') == (0 if path == "/admin/charts" else 1), path
        assert "read-only operator" in r.text or path == "/admin/charts"
    tenant_id = new_key(app, "tenant", tenant="acme")["tenant_id"]
    tenant_page = client.get(f"/admin/tenants/{tenant_id}").text
    assert tenant_page.count('method="post"') == 1
    assert "revoke" not in tenant_page and "Create key" not in tenant_page
    posts = [
        f"/admin/jobs/{job_id}/cancel",
        f"/admin/jobs/{job_id}/retry",
        "/admin/queues/default/pause",
        "/admin/queues/default/resume",
        "/admin/tenants",
        f"/admin/tenants/{tenant_id}/keys",
        f"/admin/keys/{operator['id']}/revoke",
        f"/admin/tenants/{tenant_id}/webhook-secret",
        f"/admin/tenants/{tenant_id}/limits",
        "/admin/webhooks/x/redeliver",
    ]
    for path in posts:
        r = client.post(path, data={"csrf_token": token, "name": "x", "model": "default"})
        assert r.status_code == 403, path
        assert "operator key is read-only" in r.text
    r = client.post("/admin/queues/cancel", data={"csrf_token": token, "model": "default"})
    assert r.status_code == 403
    assert authed(app).get(f"/v1/jobs/{job_id}").get_json()["status"] == "queued"
    # On the API an operator key is refused outright.
    r = authed(app, operator["key"]).get("/v1/jobs")
    assert r.status_code == 403 and "read-only" in r.get_json()["error"]["message"]


def test_every_action_is_audited_with_who_and_never_the_key(app: Flask) -> None:
    key = new_key(app, "admin")
    client, token = login(app, key["key"])
    client.post("/admin/queues/default/pause", data={"csrf_token": token})
    client.post("/admin/queues/default/resume", data={"csrf_token": token})
    client.post("/admin/tenants", data={"csrf_token": token, "name": "newco"})
    with session_scope(sessions_of(app)) as s:
        rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        actions = [(e.action, e.target) for e in rows]
        assert actions[:3] == [
            ("login", ""),
            ("queue.pause", "default"),
            ("queue.resume", "default"),
        ]
        assert actions[3][0] == "tenant.create"
        assert all(e.key_id == key["id"] and key["prefix"] in e.actor for e in rows)
    page = client.get("/admin/audit").text
    assert "queue.pause" in page and "tenant.create" in page and key["prefix"] in page
    assert key["key"] not in page


# --- jobs -----------------------------------------------------------------------------------


def fail_job(app: Flask, job_id: str) -> None:
    with session_scope(sessions_of(app)) as s:
        jobs.claim(session=s, job_id=job_id, worker="w:1")
        jobs.fail(session=s, job_id=job_id, code="inference_failed", message="boom", metrics={})


def test_retry_makes_a_new_job_with_the_same_parameters_linked_to_the_old(app: Flask) -> None:
    old = queued_job(app, seed=11, candidates=3, priority=7, metadata={"order": 1})
    client, token = login(app)
    r = client.post(f"/admin/jobs/{old}/retry", data={"csrf_token": token})
    assert r.status_code == 409 and "only failed or canceled" in r.text  # still queued
    fail_job(app, old)
    r = client.post(f"/admin/jobs/{old}/retry", data={"csrf_token": token})
    assert r.status_code == 303
    new = r.headers["Location"].split("/admin/jobs/")[1].split("?")[0]
    assert new != old
    api = authed(app)
    a, b = api.get(f"/v1/jobs/{old}").get_json(), api.get(f"/v1/jobs/{new}").get_json()
    assert b["status"] == "queued" and b["params"] == a["params"] and b["priority"] == 7
    assert b["metadata"] == {"order": 1}
    assert 'id="retry-of"' in client.get(f"/admin/jobs/{new}").text
    assert new in client.get(f"/admin/jobs/{old}").text
    with session_scope(sessions_of(app)) as s:
        assert s.get(Job, new).retry_of == old  # type: ignore[union-attr]
        assert s.get(Job, new).enqueued_at is not None  # type: ignore[union-attr]  # published


def edit_job(app: Flask) -> tuple[str, bytes, bytes]:
    """An inpaint job submitted as a client would (multipart); its image and mask bytes."""
    files: dict[str, bytes] = {}
    for role, im in (
        ("image", Image.new("RGB", (32, 32), (200, 40, 40))),
        ("mask", Image.new("L", (32, 32), 255)),
    ):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        files[role] = buf.getvalue()
    body = {"prompt": "a blue square", "steps": 2, "mode": "inpaint", "strength": 0.8}
    data: dict[str, Any] = {"request": json.dumps(body)}
    data.update({role: (io.BytesIO(b), f"{role}.png") for role, b in files.items()})
    r = authed(app).post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert r.status_code == 202, r.text
    return str(r.get_json()["id"]), files["image"], files["mask"]


def test_an_edit_jobs_page_shows_its_inputs_mode_and_strength(app: Flask) -> None:
    job_id, image, mask = edit_job(app)
    client, token = login(app)
    page = client.get(f"/admin/jobs/{job_id}").text
    assert "mode <strong>inpaint</strong> · strength 0.8 · mask_blur 0" in page
    thumbs = dict(re.findall(r'data-role="(\w+)"><img src="([^"]+)"', page))
    assert set(thumbs) == {"image", "mask"}
    browser = app.test_client()  # the signed URL alone opens it, as for outputs: no key
    shown = {
        role: Image.open(io.BytesIO(browser.get(html.unescape(url)).data))
        for role, url in thumbs.items()
    }
    assert shown["image"].tobytes() == Image.open(io.BytesIO(image)).convert("RGB").tobytes()
    assert shown["mask"].tobytes() == Image.open(io.BytesIO(mask)).convert("L").tobytes()
    tampered = html.unescape(thumbs["image"]).replace("sig=", "sig=0")
    assert browser.get(tampered).status_code in (403, 404)
    # A text job's page has no inputs section.
    assert 'id="inputs"' not in client.get(f"/admin/jobs/{queued_job(app)}").text
    # Retried, it keeps its inputs.
    client.post(f"/admin/jobs/{job_id}/cancel", data={"csrf_token": token})
    r = client.post(f"/admin/jobs/{job_id}/retry", data={"csrf_token": token})
    new = r.headers["Location"].split("/admin/jobs/")[1].split("?")[0]
    again = authed(app).get(f"/v1/jobs/{new}").get_json()
    assert {i["role"] for i in again["inputs"]} == {"image", "mask"}
    assert again["params"]["mode"] == "inpaint"


def test_cancel_from_the_dashboard(app: Flask) -> None:
    job_id = queued_job(app)
    client, token = login(app)
    assert 'id="cancel-job"' in client.get(f"/admin/jobs/{job_id}").text
    r = client.post(f"/admin/jobs/{job_id}/cancel", data={"csrf_token": token})
    assert r.status_code == 303
    assert authed(app).get(f"/v1/jobs/{job_id}").get_json()["status"] == "canceled"
    page = client.get(f"/admin/jobs/{job_id}").text
    assert 'id="cancel-job"' not in page and 'id="retry-job"' in page


def test_a_webhook_is_redelivered_from_the_job_page(app: Flask) -> None:
    job_id = queued_job(
        app, webhook_url="https://93.184.215.14/hook", webhook_events=["job.canceled"]
    )
    client, token = login(app)
    client.post(f"/admin/jobs/{job_id}/cancel", data={"csrf_token": token})
    (delivery,) = authed(app).get(f"/v1/jobs/{job_id}/webhooks").get_json()["deliveries"]
    page = client.get(f"/admin/jobs/{job_id}").text
    assert f'data-delivery="{delivery["id"]}"' in page and "job.canceled" in page
    r = client.post(f"/admin/webhooks/{delivery['id']}/redeliver", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["Location"] == f"/admin/jobs/{job_id}"
    assert "Webhook redelivery scheduled." in client.get(r.headers["Location"]).text
    with session_scope(sessions_of(app)) as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "webhook.redeliver")).one()
        assert entry.target == delivery["id"] and entry.detail == {"job": job_id}
    r = client.post("/admin/webhooks/msg_nope/redeliver", data={"csrf_token": token})
    assert r.status_code == 404


def test_the_jobs_table_filters_by_several_statuses_and_searches_prompts(app: Flask) -> None:
    a = queued_job(app, prompt="a red circle above a blue square")
    b = queued_job(app, prompt="a green triangle")
    c = queued_job(app, prompt="a Red square 100%")
    fail_job(app, b)
    authed(app).post(f"/v1/jobs/{c}/cancel")
    client, _ = login(app)

    def shown(query: str) -> set[str]:
        r = client.get("/admin/jobs?" + query)
        assert r.status_code == 200, r.text
        return set(re.findall(r'data-job="([^"]+)"', r.text))

    assert shown("") == {a, b, c}
    assert shown("status=failed&status=canceled") == {b, c}
    assert shown("q=RED") == {a, c}
    assert shown("q=100%25") == {c}  # % is a literal, not a wildcard
    assert shown("q=red&status=queued") == {a}
    assert shown("model=default&from=2000-01-01T00:00") == {a, b, c}
    assert shown("to=2000-01-01T00:00") == set()
    r = client.get("/admin/jobs?status=lost")
    assert r.status_code == 422 and "status: &#39;lost&#39; is not a job status" in r.text


def test_the_jobs_table_pages_by_cursor(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    import api.dashboard.jobs

    monkeypatch.setattr(api.dashboard.jobs, "PAGE", 2)
    made = [queued_job(app, prompt=f"shape {i}") for i in range(5)]
    client, _ = login(app)
    seen: list[str] = []
    url: str | None = "/admin/jobs"
    while url:
        page = client.get(url.replace("&amp;", "&")).text
        seen += re.findall(r'data-job="([^"]+)"', page)
        more = re.search(r'href="([^"]+)" id="next-page"', page)
        url = more.group(1) if more else None
    assert seen == made[::-1]  # newest first, each once


# --- queues ---------------------------------------------------------------------------------


def test_cancel_all_queued_names_the_count_then_cancels_only_those(app: Flask) -> None:
    queued = [queued_job(app) for _ in range(3)]
    fail_job(app, queued[0])
    client, token = login(app)
    confirm = client.get("/admin/queues/cancel?model=default")
    assert "Cancel <strong>2</strong> queued jobs of model default" in confirm.text
    r = client.post("/admin/queues/cancel", data={"csrf_token": token, "model": "default"})
    assert r.status_code == 303 and r.headers["Location"] == "/admin/queues"
    assert "Canceled 2 queued jobs of model default." in client.get("/admin/queues").text
    api = authed(app)
    statuses = [api.get(f"/v1/jobs/{j}").get_json()["status"] for j in queued]
    assert statuses == ["failed", "canceled", "canceled"]
    r = client.post("/admin/queues/cancel", data={"csrf_token": token})
    assert r.status_code == 422 and "name a model or a tenant" in r.text


def test_a_paused_queue_shows_its_jobs_as_paused(app: Flask) -> None:
    job_id = queued_job(app)
    client, token = login(app)
    client.post("/admin/queues/default/pause", data={"csrf_token": token})
    assert 'id="job-paused"' in client.get(f"/admin/jobs/{job_id}").text
    assert "badge paused" in client.get("/admin/jobs").text
    assert "Resume" in client.get("/admin/queues").text
    client.post("/admin/queues/default/resume", data={"csrf_token": token})
    assert 'id="job-paused"' not in client.get(f"/admin/jobs/{job_id}").text


def test_workers_claim_no_job_of_a_paused_model(session: Session) -> None:
    job = make_job(session, model="m1")
    other = make_job(session, model="m2")
    assert dashboard.pause(session=session, model="m1", by="test")
    assert not dashboard.pause(session=session, model="m1", by="test")  # already
    assert jobs.claim(session=session, job_id=job.id, worker="w:1") is None
    got = jobs.acquire(
        session=session,
        job_id=job.id,
        worker="w:1",
        lease_seconds=60,
        max_attempts=3,
        owner_alive=lambda _: True,
    )
    assert got.paused and got.busy_for == jobs.PAUSE_RECHECK_SECONDS and got.job is None
    session.refresh(job)
    assert job.status is JobStatus.queued and job.attempts == 0
    assert jobs.claim(session=session, job_id=other.id, worker="w:1") is not None  # m2 runs
    # The sweeper publishes no extra message for a paused job, however old its own.
    later = utcnow() + timedelta(days=1)
    taken = jobs.take_for_republish(session=session, unpublished_before=later, stale_before=later)
    assert job.id not in [t.job_id for t in taken]
    assert dashboard.resume(session=session, model="m1")
    taken = jobs.take_for_republish(session=session, unpublished_before=later, stale_before=later)
    assert job.id in [t.job_id for t in taken]  # resumed: its lost message would be replaced
    claimed = jobs.claim(session=session, job_id=job.id, worker="w:1")
    assert claimed is not None and claimed.status is JobStatus.running


# --- tenants, keys, limits, usage -----------------------------------------------------------


def test_keys_are_created_shown_once_and_revoked(app: Flask) -> None:
    client, token = login(app)
    r = client.post("/admin/tenants", data={"csrf_token": token, "name": "acme"})
    tenant_id = r.headers["Location"].split("/admin/tenants/")[1].split("?")[0]
    r = client.post(
        f"/admin/tenants/{tenant_id}/keys",
        data={"csrf_token": token, "name": "web", "scope": "tenant"},
    )
    assert r.status_code == 201
    key = re.search(r'<code id="new-key">([^<]+)</code>', r.text).group(1)  # type: ignore[union-attr]
    assert authed(app, key).get("/v1/jobs").status_code == 200
    page = client.get(f"/admin/tenants/{tenant_id}").text
    assert key not in page and key[:10] in page  # only the prefix, later
    key_id = re.search(r'data-key="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    assert (
        client.post(f"/admin/keys/{key_id}/revoke", data={"csrf_token": token}).status_code == 303
    )
    assert authed(app, key).get("/v1/jobs").status_code == 401
    r = client.post(f"/admin/tenants/{tenant_id}/keys", data={"csrf_token": token, "scope": "root"})
    assert r.status_code == 422 and "scope" in r.text


def test_tenant_limits_apply_to_its_submissions(app: Flask) -> None:
    key = new_key(app, "tenant", tenant="small")
    client, token = login(app)
    data = {
        "csrf_token": token,
        "submits_per_minute": "2",
        "max_active_jobs": "",
        "max_candidates": "2",
    }
    assert client.post(f"/admin/tenants/{key['tenant_id']}/limits", data=data).status_code == 303
    api = authed(app, key["key"])
    r = api.post("/v1/jobs", json={"prompt": "p", "candidates": 3})
    assert r.status_code == 422 and r.get_json()["error"]["param"] == "candidates"
    assert "limit of 2" in r.get_json()["error"]["message"]
    assert api.post("/v1/jobs", json={"prompt": "p", "candidates": 2}).status_code == 202
    assert api.post("/v1/jobs", json={"prompt": "p", "candidates": 2}).status_code == 202
    r = api.post("/v1/jobs", json={"prompt": "p", "candidates": 2})
    assert r.status_code == 429 and "more than 2 submissions a minute" in r.text
    bad = client.post(
        f"/admin/tenants/{key['tenant_id']}/limits", data={**data, "max_candidates": "999"}
    )
    assert bad.status_code == 422 and "max_candidates" in bad.text


def test_a_key_revoked_on_the_dashboard_is_refused_at_once_by_every_api_process(
    make_app: Any, queue_name: str
) -> None:
    """Two apps on one database and Redis stand for two API processes, each with its own key
    cache: the key is cached in `other` (polls of a queued and a finished job, a list, a
    submit), revoked on `dashboard`'s pages, and `other` refuses it on its very next request."""
    dashboard = make_app(webhook_queue=f"{queue_name}-wh")
    other = make_app(webhook_queue=f"{queue_name}-wh")
    key = new_key(dashboard, "tenant", tenant="revoked-elsewhere")
    api = authed(other, key["key"])
    queued = api.post("/v1/jobs", json={"prompt": "p", "steps": 2}).get_json()["id"]
    done = api.post("/v1/jobs", json={"prompt": "p", "steps": 2}).get_json()["id"]
    with session_scope(sessions_of(dashboard)) as session:
        jobs.claim(session=session, job_id=done, worker="w")
        jobs.fail(session=session, job_id=done, code="x", message="x", metrics={})
    paths = [f"/v1/jobs/{queued}", f"/v1/jobs/{done}", "/v1/jobs"]
    for _ in range(2):  # the second time from the caches
        assert [api.get(path).status_code for path in paths] == [200, 200, 200]
    client, token = login(dashboard)
    r = client.post(f"/admin/keys/{key['id']}/revoke", data={"csrf_token": token})
    assert r.status_code == 303
    assert [api.get(path).status_code for path in paths] == [401, 401, 401]
    r = api.post("/v1/jobs", json={"prompt": "p", "steps": 2})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_api_key"


def test_limits_set_on_the_dashboard_apply_at_once_in_every_api_process(
    make_app: Any, queue_name: str
) -> None:
    """The cached caller carries its tenant's limits: a change on the dashboard reaches the
    other process's next submission."""
    dashboard = make_app(webhook_queue=f"{queue_name}-wh")
    other = make_app(webhook_queue=f"{queue_name}-wh")
    key = new_key(dashboard, "tenant", tenant="limited-elsewhere")
    api = authed(other, key["key"])
    assert api.post("/v1/jobs", json={"prompt": "p", "candidates": 3}).status_code == 202
    client, token = login(dashboard)
    data = {
        "csrf_token": token,
        "submits_per_minute": "",
        "max_active_jobs": "",
        "max_candidates": "2",
    }
    assert client.post(f"/admin/tenants/{key['tenant_id']}/limits", data=data).status_code == 303
    r = api.post("/v1/jobs", json={"prompt": "p", "candidates": 3})
    assert r.status_code == 422 and "limit of 2" in r.get_json()["error"]["message"]


def test_rotating_the_webhook_secret_shows_the_new_one_once(app: Flask) -> None:
    key = new_key(app, "tenant", tenant="hooks")
    client, token = login(app)
    r = client.post(f"/admin/tenants/{key['tenant_id']}/webhook-secret", data={"csrf_token": token})
    assert r.status_code == 201
    secret = re.search(r'<code id="new-secret">([^<]+)</code>', r.text).group(1)  # type: ignore[union-attr]
    assert secret.startswith("whsec_")
    assert secret not in client.get(f"/admin/tenants/{key['tenant_id']}").text


def test_usage_and_overview_count_jobs_images_and_worker_time(app: Flask) -> None:
    key = new_key(app, "tenant", tenant="busy")
    r = authed(app, key["key"]).post("/v1/jobs", json={"prompt": "p", "steps": 2})
    job_id = r.get_json()["id"]
    with session_scope(sessions_of(app)) as s:
        jobs.claim(session=s, job_id=job_id, worker="w:1")
        image = jobs.NewImage(
            rank=1,
            clip_score=30.0,
            seed=1,
            width=32,
            height=32,
            content_type="image/png",
            storage_key="k",
            byte_size=10,
        )
        jobs.succeed(
            session=s,
            job_id=job_id,
            seed=1,
            images=[image, image.__class__(**{**vars(image), "rank": 2})],
            metrics={"total_seconds": 2.5},
        )
    queued_job(app)
    client, _ = login(app)
    usage = client.get("/admin/usage").text
    row = re.search(r"<tr><td>busy</td>(.*?)</tr>", usage).group(1)  # type: ignore[union-attr]
    assert re.findall(r">([\d.]+)<", row) == ["1", "1", "2", "2.5"]
    overview = client.get("/admin/?fragment=1").text
    assert re.search(r'id="total-queued">1<', overview)
    assert re.search(r'id="images-per-minute">0.2<', overview)  # 2 images in the last 10 min
    charts = client.get("/admin/charts").text
    assert charts.count("<svg") == 3


def test_a_reused_jobs_page_links_the_job_its_images_were_copied_from(app: Flask) -> None:
    earlier, repeat = queued_job(app, seed=3), queued_job(app, seed=3)
    with session_scope(sessions_of(app)) as s:
        for job_id in (earlier, repeat):
            jobs.claim(session=s, job_id=job_id, worker="w:1")
        assert jobs.succeed(
            session=s, job_id=repeat, seed=3, images=[], metrics={}, reused_from=earlier
        )
    client, _ = login(app)
    page = client.get(f"/admin/jobs/{repeat}").text
    assert 'id="reused-from"' in page and f"/admin/jobs/{earlier}" in page
    assert authed(app).get(f"/v1/jobs/{repeat}").get_json()["reused_from"] == earlier
