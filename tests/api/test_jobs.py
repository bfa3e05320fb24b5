"""Job API behaviour on a real database and Redis (no worker): idempotency, cancel, polling
headers, queue position, list filters and cursors, per-tenant limits, CORS, priorities."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from daikon.contract import JobStatus
from db import jobs
from db.models import Job, utcnow
from db.session import session_scope
from tests.apps import job_count, queued_job_ids, queued_messages
from tests.conftest import authed

BODY = {"prompt": "a red circle", "steps": 2, "candidates": 2, "top_k": 1, "seed": 1}


@pytest.fixture
def app(make_app) -> Flask:  # type: ignore[no-untyped-def]
    return make_app()


def submit(c: FlaskClient, **body: Any) -> dict[str, Any]:
    r = c.post("/v1/jobs", json={**BODY, **body})
    assert r.status_code == 202, r.get_json()
    return dict(r.get_json())


def set_job(app: Flask, job_id: str, **values: Any) -> None:
    with session_scope(app.extensions["daikon"].sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def test_a_job_claimed_before_its_defaults_are_filled_in_polls_as_running(app: Flask) -> None:
    """Submitted before any worker had published its model's defaults, its steps are unknown
    (None) until the worker that claimed it fills them in; a poll meanwhile (no step done yet)
    is a running job at 0 of 0, not a 500 (the fresh clone's CI hit it)."""
    client = authed(app)
    job = submit(client, prompt="a red circle")
    unresolved = {**job["params"], "steps": None}
    set_job(app, job["id"], status=JobStatus.running, started_at=utcnow(), params=unresolved)
    r = client.get(f"/v1/jobs/{job['id']}")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "running"
    assert r.get_json()["progress"] == {"step": 0, "total": 0, "fraction": 0.0}


# --- idempotency ------------------------------------------------------------------------------


def test_a_retried_submit_returns_the_same_job_once(
    app: Flask, redis_client: redis.Redis, queue_name: str
) -> None:
    c = authed(app)
    first = c.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "order-42"})
    again = c.post(
        "/v1/jobs",
        json=dict(reversed(list(BODY.items()))),  # same body, new order
        headers={"Idempotency-Key": "order-42"},
    )
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    assert job_count(app) == 1
    assert queued_job_ids(redis_client, queue_name) == [first.get_json()["id"]]


def test_the_same_key_with_another_body_is_refused_and_creates_nothing(
    app: Flask, redis_client: redis.Redis, queue_name: str
) -> None:
    c = authed(app)
    c.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k1"})
    r = c.post("/v1/jobs", json={**BODY, "seed": 2}, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 409
    assert r.get_json()["error"]["code"] == "idempotency_key_reused"
    assert r.get_json()["error"]["param"] == "Idempotency-Key"
    assert job_count(app) == 1 and len(queued_job_ids(redis_client, queue_name)) == 1


def test_idempotency_keys_belong_to_a_tenant_and_expire(app: Flask) -> None:
    root = authed(app)
    tenant = root.post("/v1/admin/tenants", json={"name": "other"}).get_json()
    key = root.post(f"/v1/admin/tenants/{tenant['id']}/keys", json={}).get_json()["key"]
    mine = root.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "shared"}).get_json()
    theirs = authed(app, key).post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "shared"})
    assert theirs.status_code == 202 and theirs.get_json()["id"] != mine["id"]
    # 25 hours later the key is free again: the same request makes a new job.
    set_job(app, mine["id"], created_at=datetime.now(UTC) - timedelta(hours=25))
    later = root.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "shared"})
    assert later.status_code == 202 and later.get_json()["id"] != mine["id"]


def test_an_overlong_idempotency_key_is_refused(app: Flask) -> None:
    r = authed(app).post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k" * 256})
    assert r.status_code == 422 and r.get_json()["error"]["param"] == "Idempotency-Key"
    assert job_count(app) == 0


# --- cancel -----------------------------------------------------------------------------------


def test_cancel_is_immediate_for_queued_a_no_op_twice_and_a_conflict_when_finished(
    app: Flask, redis_client: redis.Redis
) -> None:
    c = authed(app)
    job = submit(c)
    r = c.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200
    assert r.get_json()["status"] == "canceled" and r.get_json()["finished_at"] is not None
    assert redis_client.exists(f"daikon:cancel:{job['id']}")  # a running worker would stop
    again = c.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.get_json() == r.get_json()

    done = submit(c)
    with session_scope(app.extensions["daikon"].sessions) as s:
        jobs.claim(session=s, job_id=done["id"], worker="w")
        jobs.succeed(session=s, job_id=done["id"], seed=1, images=[], metrics={})
    r = c.post(f"/v1/jobs/{done['id']}/cancel")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "job_finished"
    assert c.get(f"/v1/jobs/{done['id']}").get_json()["status"] == "succeeded"


# --- polling ----------------------------------------------------------------------------------


def test_polling_gets_304_until_the_job_changes_and_is_told_when_to_return(app: Flask) -> None:
    c = authed(app)
    job = submit(c)
    first = c.get(f"/v1/jobs/{job['id']}")
    tag = first.headers["ETag"]
    assert first.headers["Retry-After"] == "2"  # queued
    same = c.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": tag})
    assert same.status_code == 304 and same.data == b"" and same.headers["ETag"] == tag
    with session_scope(app.extensions["daikon"].sessions) as s:
        jobs.claim(session=s, job_id=job["id"], worker="w")
    running = c.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": tag})
    assert running.status_code == 200 and running.headers["ETag"] != tag
    assert running.headers["Retry-After"] == "1"
    assert running.get_json()["progress"] == {"step": 0, "total": 2, "fraction": 0.0}
    app.extensions["daikon"].live.step(job["id"], 1, 2, attempt=1)
    stepped = c.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": running.headers["ETag"]})
    assert stepped.status_code == 200
    assert stepped.get_json()["progress"] == {"step": 1, "total": 2, "fraction": 0.5}


def test_queue_position_follows_priority_then_age(app: Flask) -> None:
    c = authed(app)
    a, b = submit(c, priority=5), submit(c, priority=5)
    urgent, low = submit(c, priority=9), submit(c, priority=0)
    position = {
        n: c.get(f"/v1/jobs/{j['id']}").get_json()["queue_position"]
        for n, j in {"a": a, "b": b, "urgent": urgent, "low": low}.items()
    }
    assert position == {"urgent": 0, "a": 1, "b": 2, "low": 3}


def test_priority_selects_the_broker_level(
    app: Flask, redis_client: redis.Redis, queue_name: str
) -> None:
    c = authed(app)
    top, bottom = submit(c, priority=9), submit(c, priority=0)
    levels = {job_id: key for key, job_id, _ in queued_messages(redis_client, queue_name)}
    assert levels[top["id"]] == f"{queue_name}.default"  # level 0 is served first
    assert levels[bottom["id"]] == f"{queue_name}.default:9"


# --- listing ----------------------------------------------------------------------------------


def test_list_filters_and_a_cursor_that_survives_new_jobs(app: Flask) -> None:
    c = authed(app)
    made = [submit(c, prompt=f"p{i}")["id"] for i in range(5)]
    c.post(f"/v1/jobs/{made[1]}/cancel")
    page1 = c.get("/v1/jobs?limit=2").get_json()
    assert [j["id"] for j in page1["jobs"]] == [made[4], made[3]] and page1["has_more"]
    submit(c, prompt="arrives between pages")  # must not shift the pages
    page2 = c.get(f"/v1/jobs?limit=2&cursor={page1['next_cursor']}").get_json()
    page3 = c.get(f"/v1/jobs?limit=2&cursor={page2['next_cursor']}").get_json()
    assert [j["id"] for j in page2["jobs"]] == [made[2], made[1]]
    assert [j["id"] for j in page3["jobs"]] == [made[0]]
    assert page3["has_more"] is False and page3["next_cursor"] is None

    canceled = c.get("/v1/jobs?status=canceled").get_json()["jobs"]
    assert [j["id"] for j in canceled] == [made[1]]
    assert c.get("/v1/jobs?model=other").get_json()["jobs"] == []
    future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert c.get(f"/v1/jobs?created_after={future}").get_json()["jobs"] == []


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("status=done", "status"),
        ("created_after=yesterday", "created_after"),
        ("created_after=2026-01-01T00:00:00", "created_after"),
        ("cursor=%%%", "cursor"),
        ("sort=asc", "sort"),
    ],
)
def test_bad_list_queries_name_the_parameter(app: Flask, query: str, param: str) -> None:
    r = authed(app).get(f"/v1/jobs?{query}")
    assert r.status_code == 422 and r.get_json()["error"]["param"] == param


# --- limits and CORS --------------------------------------------------------------------------


def test_submissions_over_the_rate_limit_get_429_and_leave_nothing(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tenant_submits_per_minute=2)
    c = authed(app)
    submit(c), submit(c)
    r = c.post("/v1/jobs", json=BODY)
    assert r.status_code == 429 and r.get_json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(r.headers["Retry-After"]) <= 61
    assert job_count(app) == 2


def test_a_tenant_over_its_active_job_cap_gets_429(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tenant_max_active_jobs=1)
    c = authed(app)
    first = submit(c)
    r = c.post("/v1/jobs", json=BODY)
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "too_many_active_jobs"
    c.post(f"/v1/jobs/{first['id']}/cancel")  # no longer active: room again
    submit(c)


def test_cors_answers_configured_origins_only(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(cors_origins="https://app.example")
    asks = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type, Idempotency-Key",
    }
    preflight = app.test_client().options("/v1/jobs", headers=asks)
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "idempotency-key" in allowed
    other = authed(app).get("/v1/jobs", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    exposed = authed(app).get("/v1/jobs", headers={"Origin": "https://app.example"})
    assert exposed.headers["Access-Control-Allow-Origin"] == "https://app.example"
