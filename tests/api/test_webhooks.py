"""Webhooks at the HTTP edge on a real database and Redis (no worker): unsafe destinations are
refused at submit, the signing secret is shown once, a cancel records exactly one
job.canceled event, and deliveries are listed only to their tenant."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from server.webhooks.safety import Allowlist, UnsafeDestination, check_url
from tests.apps import authed, job_count, queued_messages
from tests.conftest import ADMIN_KEY

BODY = {"prompt": "a red circle", "steps": 2, "candidates": 2, "top_k": 1, "seed": 1}

UNSAFE = {
    "http://127.0.0.1/hook": "loopback",
    "http://10.0.0.1/hook": "private",
    "http://172.16.0.1/hook": "private",
    "http://192.168.1.1/hook": "private",
    "http://169.254.169.254/latest/meta-data/": "link-local",
    "http://0.0.0.0:8080/hook": "unspecified",
    "http://224.0.0.1/hook": "multicast",
    "https://240.0.0.1/hook": "reserved",
    "http://[::1]:9000/hook": "loopback",
    "http://[fe80::1]/hook": "link-local",
    "http://[fc00::1]/hook": "private",
    "http://[::ffff:127.0.0.1]/hook": "loopback",
    "http://2130706433/hook": "loopback",
    "http://0177.0.0.1/hook": "loopback",
    "http://0x7f.0.0.1/hook": "loopback",
    "http://127.1/hook": "loopback",
    "http://localhost:8080/hook": "loopback",
    "http://LOCALHOST./hook": "loopback",
}


@pytest.fixture
def app(make_app, queue_name: str) -> Flask:  # type: ignore[no-untyped-def]
    return make_app(webhook_queue=f"{queue_name}-wh")


def webhook_messages(app: Flask, redis_client: redis.Redis) -> list[str]:
    """Delivery ids published on the webhook queue."""
    queue = app.extensions["daikon"].settings.webhooks.webhook_queue
    return [d for _key, d, _prio in queued_messages(redis_client, queue)]


def submit(c: FlaskClient, **body: Any) -> dict[str, Any]:
    r = c.post("/v1/jobs", json={**BODY, **body})
    assert r.status_code == 202, r.get_json()
    return dict(r.get_json())


def test_unsafe_destinations_are_refused_at_submit_naming_the_field(
    app: Flask, redis_client: redis.Redis, queue_name: str
) -> None:
    c = authed(app)
    answers = {}
    for url in UNSAFE:
        r = c.post("/v1/jobs", json={**BODY, "webhook_url": url})
        err = r.get_json()["error"]
        answers[url] = (r.status_code, err["param"], UNSAFE[url] in err["message"])
    assert answers == {url: (422, "webhook_url", True) for url in UNSAFE}
    assert job_count(app) == 0 and queued_messages(redis_client, queue_name) == []


def test_public_destinations_and_allowlisted_receivers_are_accepted(make_app, queue_name) -> None:  # type: ignore[no-untyped-def]
    c = authed(make_app(webhook_allow_hosts="127.0.0.1, hooks.internal"))
    for url in (
        "https://93.184.215.14/hook",  # a public address
        "https://hooks.example.invalid/x",  # does not resolve (yet): checked at delivery
        "http://127.0.0.1:9/hook",  # allowlisted address
        "http://hooks.internal/x",  # allowlisted name
    ):
        assert c.post("/v1/jobs", json={**BODY, "webhook_url": url}).status_code == 202, url
    # The allowlist lets through what it names, nothing else.
    r = c.post("/v1/jobs", json={**BODY, "webhook_url": "http://10.0.0.1/hook"})
    assert r.status_code == 422 and r.get_json()["error"]["param"] == "webhook_url"


def test_a_name_resolving_to_an_internal_address_is_refused() -> None:
    def resolver(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("10.0.0.7")]

    with pytest.raises(UnsafeDestination, match=r"hooks\.example resolves to a private") as e:
        check_url("https://hooks.example/x", Allowlist(), resolver)
    assert "10.0.0.7" not in str(e.value)  # internal DNS answers are not shown to clients
    check_url("https://hooks.example/x", Allowlist.parse(["10.0.0.0/8"]), resolver)


def test_the_signing_secret_is_shown_once_and_a_rotation_keeps_the_old_one_for_a_day(
    app: Flask,
) -> None:
    c = authed(app)
    first = c.post("/v1/webhooks/secret")
    assert first.status_code == 201 and first.headers["Cache-Control"] == "no-store"
    one = first.get_json()
    assert one["secret"].startswith("whsec_") and one["previous_expires_at"] is None

    two = c.post("/v1/webhooks/secret", json={}).get_json()
    assert two["secret"] != one["secret"]
    expires = datetime.fromisoformat(two["previous_expires_at"])
    assert abs(expires - datetime.now(UTC) - timedelta(hours=24)) < timedelta(minutes=1)

    # After a leak: overlap 0 ends the previous secret now.
    three = c.post("/v1/webhooks/secret", json={"overlap_hours": 0}).get_json()
    assert abs(datetime.fromisoformat(three["previous_expires_at"]) - datetime.now(UTC)) < (
        timedelta(minutes=1)
    )
    bad = c.post("/v1/webhooks/secret", json={"overlap_hours": -1, "x": 1})
    assert bad.status_code == 422
    assert c.post("/v1/webhooks/secret").status_code == 201

    # Never shown again: not in jobs, deliveries or admin listings.
    job = submit(c, webhook_url="https://93.184.215.14/hook", webhook_events=["job.canceled"])
    c.post(f"/v1/jobs/{job['id']}/cancel")
    seen = " ".join(
        c.get(path).get_data(as_text=True)
        for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/webhooks", "/v1/jobs")
    )
    assert not any(s["secret"] in seen for s in (one, two, three))


def test_a_cancel_records_one_canceled_event_and_publishes_it(
    app: Flask, redis_client: redis.Redis
) -> None:
    c = authed(app)
    hooked = submit(
        c,
        webhook_url="https://93.184.215.14/hook",
        webhook_events=["job.canceled", "job.succeeded"],
    )
    quiet = submit(c, webhook_url="https://93.184.215.14/hook", webhook_events=["job.failed"])
    none = submit(c)
    for job in (hooked, quiet, none, hooked):  # the second cancel of `hooked` is a no-op
        assert c.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200

    listed = c.get(f"/v1/jobs/{hooked['id']}/webhooks")
    assert listed.status_code == 200
    (delivery,) = listed.get_json()["deliveries"]
    assert delivery["event"] == "job.canceled" and delivery["status"] == "pending"
    assert delivery["id"].startswith("msg_") and delivery["url"] == hooked["webhook_url"]
    assert (delivery["attempt_count"], delivery["max_attempts"], delivery["attempts"]) == (0, 8, [])
    assert webhook_messages(app, redis_client) == [delivery["id"]]
    for job in (quiet, none):
        assert c.get(f"/v1/jobs/{job['id']}/webhooks").get_json() == {"deliveries": []}


def test_deliveries_are_the_tenants_own_and_redelivery_is_for_admins(app: Flask) -> None:
    root = authed(app)
    tenant = root.post("/v1/admin/tenants", json={"name": "other"}).get_json()
    key = root.post(f"/v1/admin/tenants/{tenant['id']}/keys", json={}).get_json()["key"]
    theirs = authed(app, key)
    job = submit(theirs, webhook_url="https://93.184.215.14/hook", webhook_events=["job.canceled"])
    theirs.post(f"/v1/jobs/{job['id']}/cancel")
    (delivery,) = theirs.get(f"/v1/jobs/{job['id']}/webhooks").get_json()["deliveries"]

    assert root.get(f"/v1/jobs/{job['id']}/webhooks").status_code == 404
    assert authed(app, ADMIN_KEY).get("/v1/jobs/nope/webhooks").status_code == 404
    denied = theirs.post(f"/v1/admin/webhooks/{delivery['id']}/redeliver")
    assert denied.status_code == 403
    missing = root.post("/v1/admin/webhooks/msg_nope/redeliver")
    assert missing.status_code == 404 and missing.get_json()["error"]["param"] == "id"
