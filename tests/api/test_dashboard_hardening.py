"""The dashboard's second hardening round (issue 21, items 4 and 8), through Flask's test client
on real SQLite and PostgreSQL: a session dies with the key it was opened with, whichever kind;
odd query strings are refused with a clear message, never a 500; a `next=` that is not a
dashboard address is refused before a session is written; only a known model's queue can be
paused, and any paused one resumed; a link cannot make a page say anything."""

from __future__ import annotations

import hashlib
import html
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from flask import Flask
from sqlalchemy import delete, func, select

from daikon.contract import JobStatus
from db import jobs
from db.models import AuditEntry, DashboardSession, PausedModel, utcnow
from db.session import session_scope
from tests.apps import csrf_of, login, new_key, queued_job, sessions_of
from tests.conftest import authed
from tests.factories import job_params
from tests.stack import ADMIN_KEY

OLD_KEY = "dk_admin_old_" + "a" * 32
NEW_KEY = "dk_admin_new_" + "b" * 32


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> dict[str, Any]:
    """make_app's overrides for the backend (the tmp_path SQLite file, or this run's
    PostgreSQL database, shared by the tests: they count rows before and after)."""
    if request.param == "sqlite":
        return {}
    return {"database_url": request.getfixturevalue("postgres_url")}


@pytest.fixture
def app(make_app: Any, queue_name: str, database: dict[str, Any]) -> Flask:
    return make_app(webhook_queue=f"{queue_name}-wh", **database)  # type: ignore[no-any-return]


def session_count(app: Flask) -> int:
    with session_scope(sessions_of(app)) as s:
        return int(s.scalar(select(func.count()).select_from(DashboardSession)) or 0)


def with_cookie(app: Flask, cookie: str) -> Any:
    """A browser that kept the session cookie across the API's restart."""
    client = app.test_client()
    client.set_cookie("daikon_admin", cookie, path="/admin")
    return client


def tenant_names(app: Flask, key: str) -> set[str]:
    return {t["name"] for t in authed(app, key).get("/v1/admin/tenants").get_json()["tenants"]}


# --- a session dies with its key (item 4) ---------------------------------------------------


def test_a_new_admin_key_ends_the_sessions_opened_with_the_old_one(
    make_app: Any, database: dict[str, Any]
) -> None:
    before = make_app(admin_key=OLD_KEY, **database)
    client, token = login(before, OLD_KEY)
    cookie = client.get_cookie("daikon_admin", path="/admin")
    assert cookie is not None

    # A restart with the same key keeps the session (what makes the next check mean anything).
    same = with_cookie(make_app(admin_key=OLD_KEY, **database), cookie.value)
    assert same.get("/admin/tenants").status_code == 200

    # A restart with another key: the old session opens no page and changes nothing.
    after = make_app(admin_key=NEW_KEY, **database)
    old = with_cookie(after, cookie.value)
    r = old.get("/admin/tenants")
    assert r.status_code == 302 and r.headers["Location"].startswith("/admin/login")
    r = old.post("/admin/tenants", data={"csrf_token": token, "name": "made-with-old-key"})
    assert r.status_code == 401 and "Sign in again" in r.text
    assert "made-with-old-key" not in tenant_names(after, NEW_KEY)
    # The new key signs in as usual.
    fresh, _ = login(after, NEW_KEY)
    assert fresh.get("/admin/tenants").status_code == 200

    # No admin key at all: no session of a settings key lives on.
    keyless = make_app(admin_key=None, **database)
    assert with_cookie(keyless, cookie.value).get("/admin/").status_code == 302


def test_a_session_keeps_an_hmac_of_its_key_never_the_key_or_its_plain_hash(app: Flask) -> None:
    api_key = new_key(app, "admin")
    for key in (ADMIN_KEY, api_key["key"]):
        login(app, key)
    with session_scope(sessions_of(app)) as s:
        rows = s.scalars(select(DashboardSession)).all()
        stored = {r.key_fingerprint for r in rows}
    for key in (ADMIN_KEY, api_key["key"]):
        assert key not in str(stored) and hashlib.sha256(key.encode()).hexdigest() not in stored
    assert all(len(f) == 64 for f in stored)


def test_an_api_key_session_is_checked_against_its_key_record(app: Flask) -> None:
    """A session row naming an API key, with the fingerprint of another key (a row written
    for a key since replaced): refused, as a revoked key's."""
    mine, other = new_key(app, "admin"), new_key(app, "admin", tenant="ops2")
    client, _ = login(app, mine["key"])
    assert client.get("/admin/jobs").status_code == 200
    _, _ = login(app, other["key"])
    with session_scope(sessions_of(app)) as s:
        theirs = s.scalars(
            select(DashboardSession).where(DashboardSession.key_id == other["id"])
        ).first()
        assert theirs is not None
        for row in s.scalars(
            select(DashboardSession).where(DashboardSession.key_id == mine["id"])
        ).all():
            row.key_fingerprint = theirs.key_fingerprint
    assert client.get("/admin/jobs").status_code == 302


# --- odd query strings (item 8) --------------------------------------------------------------

ODD = [
    # the four of the issue
    ("/admin/usage?to=0001-01-01", "to", "between 1970-01-01 and 9999-01-01"),
    ("/admin/jobs?from=9999-12-31T23:59-01:00", "from", "between 1970-01-01 and 9999-01-01"),
    ("/admin/jobs?to=9999-12-31T23:59-01:00", "to", "between 1970-01-01 and 9999-01-01"),
    ("/admin/audit?before=" + "9" * 30, "before", "not an entry number"),
    # their relatives
    ("/admin/usage?to=9999-12-31T23:59-01:00", "to", "between 1970-01-01 and 9999-01-01"),
    ("/admin/usage?to=0001-01-01T00:00:00-00:01", "to", "between 1970-01-01 and 9999-01-01"),
    ("/admin/usage?from=0001-01-01", "from", "between 1970-01-01 and 9999-01-01"),
    ("/admin/usage?from=9999-06-01", "from", "between 1970-01-01 and 9999-01-01"),
    ("/admin/jobs?from=0001-01-01T00:00%2B01:00", "from", "between 1970-01-01 and 9999-01-01"),
    ("/admin/jobs?to=9999-12-31", "to", "between 1970-01-01 and 9999-01-01"),
    ("/admin/jobs?from=yesterday", "from", "not a date and time"),
    ("/admin/audit?before=" + "9" * 5000, "before", "not an entry number"),
    ("/admin/audit?before=-1", "before", "not an entry number"),
    ("/admin/audit?before=2147483648", "before", "not an entry number"),
    ("/admin/audit?before=%EF%BC%91%EF%BC%92", "before", "not an entry number"),  # fullwidth 12
    ("/admin/jobs?cursor=abc", "cursor", "not a cursor"),
    ("/admin/jobs?cursor=123", "cursor", "not a cursor"),
    ("/admin/jobs?cursor=" + "W" * 3000, "cursor", "not a cursor"),
    # a cursor whose time is 9999-12-31T23:59-01:00 (after year 9999 in UTC)
    ("/admin/jobs?cursor=WyI5OTk5LTEyLTMxVDIzOjU5LTAxOjAwIiwieCJd", "cursor", "not a cursor"),
    ("/admin/jobs?fragment=1&cursor=zz", "cursor", "not a cursor"),
    ("/admin/jobs?status=zzz", "status", "not a job status"),
    ("/admin/usage?from=2020-01-02&to=2020-01-01", "from", "must be before to"),
]


@pytest.mark.parametrize(("path", "param", "message"), ODD)
def test_odd_query_strings_are_refused_with_the_parameter_named(
    app: Flask, path: str, param: str, message: str
) -> None:
    queued_job(app)
    client, _ = login(app)
    r = client.get(path)
    assert r.status_code == 422, (path, r.status_code, r.text[:300])
    text = html.unescape(r.text)
    assert f"{param}: " in text and message in text, text


def test_ordinary_and_edge_values_still_answer(app: Flask) -> None:
    job_id = queued_job(app)
    client, _ = login(app)
    for path in (
        "/admin/jobs?from=2020-01-01T00:00%2B05:00&to=2998-12-31T23:59-12:00",
        "/admin/usage?from=1970-01-01&to=9998-12-31T23:59:59",
        "/admin/audit?before=2147483647",
        "/admin/audit?before=",
        "/admin/jobs?model=" + "m" * 300 + "&tenant=" + "t" * 300 + "&q=" + "%" * 500,
        "/admin/queues/cancel?model=" + "m" * 300,
    ):
        assert client.get(path).status_code == 200, path
    assert job_id in client.get("/admin/jobs?from=1970-01-01").text


# --- next= (item 8) --------------------------------------------------------------------------


def sign_in(app: Flask, next_: str) -> Any:
    client = app.test_client()
    form = client.get("/admin/login")
    return client, client.post(
        "/admin/login", data={"key": ADMIN_KEY, "next": next_, "csrf_token": csrf_of(form.text)}
    )


@pytest.mark.parametrize(
    "target",
    [
        "/admin/\r\nSet-Cookie: x=1",
        "/admin/jobs\n",
        "/admin/\x7f",
        "https://evil.example/admin/",
        "//evil.example/admin/",
        "/admin/..\\..\\evil",
        "/admin/../v1/jobs",
        "/administrator",
        "/admin/jobs é",
        "/admin/" + "x" * 3000,
    ],
)
def test_a_next_that_is_not_a_dashboard_address_is_refused_before_a_session_is_written(
    app: Flask, target: str
) -> None:
    before = session_count(app)
    client, r = sign_in(app, target)
    assert r.status_code == 400, r.text
    assert "next: not an address of this dashboard" in html.unescape(r.text)
    assert not any(c.startswith("daikon_admin=") for c in r.headers.getlist("Set-Cookie"))
    assert session_count(app) == before
    assert client.get("/admin/").status_code == 302  # not signed in


def test_a_dashboard_next_is_followed_and_an_unsafe_one_never_reaches_the_form(app: Flask) -> None:
    _, r = sign_in(app, "/admin/jobs?status=queued&q=a%20b")
    assert r.status_code == 303 and r.headers["Location"] == "/admin/jobs?status=queued&q=a%20b"
    form = app.test_client().get("/admin/login?next=" + quote("/admin/\r\nX: 1"))
    assert form.status_code == 200 and 'name="next" value=""' in form.text
    # Signed out on a page whose path holds a CR/LF: the sign-in form forgets it.
    r = app.test_client().get("/admin/jobs/%0D%0Ax")
    assert r.status_code == 302 and r.headers["Location"] == "/admin/login"
    r = app.test_client().get("/admin/jobs?status=queued")
    assert parse_qs(urlsplit(r.headers["Location"]).query)["next"] == ["/admin/jobs?status=queued"]


# --- pausing (item 8) ------------------------------------------------------------------------


def test_a_model_that_does_not_exist_cannot_be_paused(app: Flask) -> None:
    client, token = login(app)
    unknown = ("no-such-model", "x" * 100)
    for model in unknown:
        r = client.post(f"/admin/queues/{model}/pause", data={"csrf_token": token})
        assert r.status_code == 404, r.text
        assert "no queue to pause" in html.unescape(r.text)
    with session_scope(sessions_of(app)) as s:  # (the PostgreSQL database is the run's)
        assert s.scalars(select(PausedModel).where(PausedModel.model.in_(unknown))).all() == []
        paused = select(AuditEntry).where(
            AuditEntry.action == "queue.pause", AuditEntry.target.in_(unknown)
        )
        assert s.scalars(paused).all() == []
    # A configured model, and one that only has queued jobs left, can be.
    with session_scope(sessions_of(app)) as s:
        jobs.create(session=s, params=job_params(model="retired"))
    for model in ("default", "retired"):
        r = client.post(f"/admin/queues/{model}/pause", data={"csrf_token": token})
        assert r.status_code == 303, (model, r.text)
    with session_scope(sessions_of(app)) as s:
        paused_now = {p.model for p in s.scalars(select(PausedModel)).all()}
        assert {"default", "retired"} <= paused_now and not paused_now & set(unknown)
        # The PostgreSQL database is the run's: leave no queue paused for later tests.
        s.execute(delete(PausedModel).where(PausedModel.model.in_(["default", "retired"])))


def test_any_paused_model_can_be_resumed_from_the_queues_page(app: Flask) -> None:
    """A model paused before the check existed (or whose jobs and configuration are gone)
    is listed, paused, with its Resume button, and resumes."""
    with session_scope(sessions_of(app)) as s:
        s.add(PausedModel(model="ghost", paused_by="someone", paused_at=utcnow()))
    client, token = login(app)
    page = client.get("/admin/queues").text
    assert 'data-model="ghost"' in page
    assert 'action="/admin/queues/ghost/resume"' in page
    assert 'data-model="ghost"' in client.get("/admin/").text  # the overview lists it too
    r = client.post("/admin/queues/ghost/resume", data={"csrf_token": token})
    assert r.status_code == 303
    assert "Queue ghost resumed." in client.get(r.headers["Location"]).text
    with session_scope(sessions_of(app)) as s:
        assert s.get(PausedModel, "ghost") is None
    assert 'data-model="ghost"' not in client.get("/admin/queues").text


# --- notices (item 8) ------------------------------------------------------------------------


def test_a_link_cannot_make_a_page_say_anything(app: Flask) -> None:
    client, _ = login(app)
    crafted = "Your session expired: sign in again at https://evil.example"
    for path in ("/admin/", "/admin/queues", "/admin/jobs", "/admin/tenants"):
        r = client.get(f"{path}?notice={quote(crafted)}")
        assert r.status_code == 200
        assert crafted not in html.unescape(r.text) and 'class="notice"' not in r.text, path


def test_an_actions_notice_is_shown_once_on_the_next_page(app: Flask) -> None:
    client, token = login(app)
    r = client.post("/admin/queues/default/pause", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["Location"] == "/admin/queues"
    # A fragment's refresh in another tab neither shows nor takes it.
    assert 'class="notice"' not in client.get("/admin/?fragment=1").text
    page = client.get("/admin/queues").text
    assert '<p class="notice" role="status">Queue default paused' in page
    assert 'class="notice"' not in client.get("/admin/queues").text  # once
    # Another session (another browser) never sees this one's notices.
    other, other_token = login(app)
    client.post("/admin/queues/default/resume", data={"csrf_token": token})
    assert 'class="notice"' not in other.get("/admin/queues").text
    assert "Queue default resumed." in client.get("/admin/queues").text
    assert other_token != token


def test_a_job_action_says_what_it_did_on_the_job_page(app: Flask) -> None:
    job_id = queued_job(app)
    client, token = login(app)
    r = client.post(f"/admin/jobs/{job_id}/cancel", data={"csrf_token": token})
    assert r.headers["Location"] == f"/admin/jobs/{job_id}"
    page = client.get(r.headers["Location"]).text
    assert "Canceled." in page
    api = authed(app).get(f"/v1/jobs/{job_id}").get_json()
    assert api["status"] == JobStatus.canceled.value
