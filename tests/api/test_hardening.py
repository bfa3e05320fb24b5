"""What one tenant or a careless client must not be able to do, in-process on the real
database and Redis: bodies that break parsers or databases, jobs too large for their model, a
tenant filling a model's queue, secrets readable at rest, internal answers shown to tenants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.slots import LongRequests
from daikon.contract import WebhookEvent
from daikon.errors import ServiceUnavailable
from daikon.limits import LimitOverrides, ModelLimits, resolve
from db import deliveries
from db.deliveries import Outbox
from db.models import Job, WebhookSecret
from db.session import session_scope
from db.tenants import create_tenant
from server import served_models
from server.encryption import Cipher, DecryptionError
from server.job_view import EventRenderer, Links
from server.served_models import ServedModel
from server.storage import LocalStore
from server.webhooks import safety
from tests.conftest import authed
from tests.factories import make_job
from worker.webhooks.http import answer_excerpt

VALID = {"prompt": "a red circle", "steps": 4, "candidates": 2, "top_k": 1, "seed": 3}


@pytest.fixture
def app(make_app) -> Flask:  # type: ignore[no-untyped-def]
    return make_app()


def job_count(app: Flask) -> int:
    with session_scope(app.extensions["daikon"].sessions) as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def post_raw(client: FlaskClient, raw: str | bytes) -> Any:
    return client.post("/v1/jobs", data=raw, content_type="application/json")


# --- bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [65, 500, 950, 5000])
def test_deeply_nested_json_is_a_400_before_anything_recurses(
    app: Flask, client: FlaskClient, depth: int
) -> None:
    nested = '{"a":' * depth + "1" + "}" * depth
    r = post_raw(client, f'{{"prompt": "x", "metadata": {nested}}}')
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"] == {
        "type": "invalid_request_error",
        "code": "invalid_json",
        "param": None,
        "message": "request body is nested deeper than 64 levels",
    }
    assert job_count(app) == 0


def test_nesting_within_the_limit_is_stored_as_given(client: FlaskClient) -> None:
    nested: Any = "leaf"
    for _ in range(62):  # the body is level 1, metadata level 2: 64 in all
        nested = {"a": nested}
    # Brackets inside strings are text, not nesting.
    metadata = {"brackets": "[[[{{{" * 20 + '\\"', "n": nested}
    r = client.post("/v1/jobs", json={**VALID, "metadata": metadata})
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["metadata"] == metadata


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ('{"prompt": "a\\ud800b"}', "prompt"),
        ('{"prompt": "x", "metadata": {"note": "\\udfff"}}', "metadata"),
        ('{"prompt": "x", "metadata": {"\\ud83d": 1}}', "metadata key"),
    ],
)
def test_text_that_is_not_unicode_is_a_400_and_leaves_nothing(
    app: Flask,
    client: FlaskClient,
    redis_client: redis.Redis,
    queue_name: str,
    raw: str,
    param: str,
) -> None:
    r = post_raw(client, raw)
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "invalid_json"
    assert "not valid Unicode (a lone surrogate \\u" in error["message"]
    assert job_count(app) == 0 and not list(redis_client.scan_iter(f"{queue_name}*"))


def test_a_surrogate_pair_written_as_escapes_is_an_ordinary_character(client: FlaskClient) -> None:
    r = post_raw(client, '{"prompt": "a red circle \\ud83d\\ude00"}')
    assert r.status_code == 202 and r.get_json()["params"]["prompt"] == "a red circle \U0001f600"


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1E999"])
def test_numbers_json_cannot_hold_are_a_400(app: Flask, client: FlaskClient, number: str) -> None:
    r = post_raw(client, f'{{"prompt": "x", "metadata": {{"a": {number}}}}}')
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_json"
    assert job_count(app) == 0


@pytest.mark.parametrize(
    "prompt", ["\u200b", "\u200b\u200c\u200d\u2060", "\ufeff \u200b", "\u0301"]
)
def test_a_prompt_with_no_visible_character_is_refused(
    app: Flask, client: FlaskClient, prompt: str
) -> None:
    r = client.post("/v1/jobs", json={**VALID, "prompt": prompt})
    assert r.status_code == 422, r.get_json()
    error = r.get_json()["error"]
    assert error["param"] == "prompt" and "visible character" in error["message"]
    assert job_count(app) == 0


def test_a_last_event_id_no_stream_sent_is_ignored(client: FlaskClient) -> None:
    job_id = client.post("/v1/jobs", json=VALID).get_json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")
    r = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "9" * 5000})
    assert r.status_code == 200 and "event: done" in r.get_data(as_text=True)


# --- stream and wait slots --------------------------------------------------------------------


def test_slots_are_capped_per_tenant_and_for_all_and_released_exactly_once() -> None:
    pool = LongRequests(limit=3, per_tenant=2)
    a1 = pool.acquire("a", code="c", what="things", instead="wait")
    a2 = pool.acquire("a", code="c", what="things", instead="wait")
    with pytest.raises(ServiceUnavailable, match="this tenant has 2 things"):
        pool.acquire("a", code="c", what="things", instead="wait")
    b1 = pool.acquire("b", code="c", what="things", instead="wait")
    with pytest.raises(ServiceUnavailable, match=r"^too many things on this server; wait$"):
        pool.acquire("b", code="c", what="things", instead="wait")
    a1.release()
    a1.release()  # a second release (HEAD, close after an error...) gives nothing back twice
    assert (pool.held("a"), pool.held("b"), pool.held()) == (1, 1, 2)
    with pool.acquire("b", code="c", what="things", instead="wait"):
        assert pool.held() == 3
    a2.release()
    b1.release()
    assert pool.held() == 0


# --- job cost ---------------------------------------------------------------------------------

HUGE = {"prompt": "x", "width": 1024, "height": 1024, "steps": 150, "candidates": 16, "top_k": 16}


def publish_limits(app: Flask, limits: ModelLimits, device: str = "cpu") -> None:
    svc = app.extensions["daikon"]
    served_models.publish(
        svc.live.redis,
        svc.settings,
        ServedModel(model="default", device=device, limits=limits, loaded_at=datetime.now(UTC)),
    )


def test_a_job_over_its_models_cost_is_refused_at_submit_naming_what_it_costs(
    app: Flask, client: FlaskClient, redis_client: redis.Redis, queue_name: str
) -> None:
    publish_limits(app, resolve("cpu"))
    r = client.post("/v1/jobs", json=HUGE)
    assert r.status_code == 422, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "job_too_large"
    assert error["message"] == (
        "this job costs 2517 megapixel-steps (1024x1024 px x 16 candidates x 150 steps); "
        "model 'default' on cpu allows at most 4: ask for a smaller size, fewer candidates or "
        "fewer steps"
    )
    assert job_count(app) == 0 and not list(redis_client.scan_iter(f"{queue_name}*"))
    # The same job fits a model on a GPU.
    publish_limits(app, resolve("cuda"), device="cuda")
    app.extensions["daikon"].served_models._cache.clear()
    assert (
        client.post("/v1/jobs", json={**HUGE, "steps": 50, "candidates": 8, "top_k": 8}).status_code
        == 202
    )


def test_models_show_their_limits_once_a_worker_has_loaded_them(
    app: Flask, client: FlaskClient
) -> None:
    before = next(m for m in client.get("/v1/models").get_json()["models"] if m["default"])
    assert (before["device"], before["limits"]) == (None, None)
    publish_limits(app, resolve("cpu"))
    app.extensions["daikon"].served_models._cache.clear()
    after = next(m for m in client.get("/v1/models").get_json()["models"] if m["default"])
    assert after["device"] == "cpu"
    assert after["limits"] == {
        "max_job_cost": 4.0,
        "images_per_call": 4,
        "seconds_per_cost": 120.0,
        "tenant_queued_cost": 200.0,
    }


def test_one_tenant_cannot_queue_more_work_for_a_model_than_its_budget(
    app: Flask, client: FlaskClient
) -> None:
    publish_limits(app, resolve("cpu", LimitOverrides(tenant_queued_cost=10.0)))
    admin = client
    tenant = admin.post("/v1/admin/tenants", json={"name": "greedy"}).get_json()
    key = admin.post(f"/v1/admin/tenants/{tenant['id']}/keys", json={}).get_json()["key"]
    greedy = authed(app, key)
    big = {"prompt": "x", "width": 256, "height": 256, "candidates": 4, "steps": 14}  # 3.67
    assert [greedy.post("/v1/jobs", json=big).status_code for _ in range(2)] == [202, 202]
    refused = greedy.post("/v1/jobs", json=big)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "10"
    error = refused.get_json()["error"]
    assert error["code"] == "too_much_queued_work"
    assert (
        "cost 7.34 megapixel-steps; with this one (3.67) they would pass the budget of 10"
        in (error["message"])
    )
    assert job_count(app) == 2
    # Smaller work still fits, other tenants have budgets of their own, and a finished (here
    # canceled) job gives its share back.
    assert greedy.post("/v1/jobs", json={**big, "steps": 5}).status_code == 202
    assert admin.post("/v1/jobs", json=big).status_code == 202
    first = greedy.get("/v1/jobs").get_json()["jobs"][-1]["id"]
    assert greedy.post(f"/v1/jobs/{first}/cancel").status_code == 200
    assert greedy.post("/v1/jobs", json=big).status_code == 202


# --- webhooks ---------------------------------------------------------------------------------


def test_a_webhook_event_that_cannot_be_rendered_is_a_failed_delivery_on_the_job(
    make_app,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Text that slipped in before the edge refused it (here written straight to SQLite, which
    stores a lone surrogate) must not make the event vanish."""
    app = make_app()
    client = authed(app)
    svc = app.extensions["daikon"]
    # The admin's tenant first: SQLite's one writer is this test's session below.
    tenant_id = client.get("/v1/admin/tenants").get_json()["tenants"][0]["id"]
    with session_scope(svc.sessions) as s:
        job = make_job(s)
        job.tenant_id = tenant_id
        job.webhook_url, job.webhook_events = "https://example.com/hook", ["job.canceled"]
        job.client_metadata = {"note": "\ud800"}
        job_id = job.id
    links = Links("", LocalStore(tmp_path), b"k", 60)
    with session_scope(svc.sessions) as s:
        emitted = Outbox(EventRenderer(links), publish=lambda _: None).record(
            s, s.get(Job, job_id), WebhookEvent.canceled
        )
    assert emitted == []  # nothing to send...
    (delivery,) = client.get(f"/v1/jobs/{job_id}/webhooks").get_json()["deliveries"]
    assert (delivery["event"], delivery["status"], delivery["attempt_count"]) == (
        "job.canceled",
        "failed",
        0,
    )
    assert delivery["last_error"].startswith("the event could not be rendered: ")
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "daikon_webhook_unrendered_events 1.0" in metrics


OLD_KEY, NEW_KEY = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def test_webhook_secrets_are_encrypted_at_rest_and_rotate_to_a_new_key(session: Session) -> None:
    old, rotating = Cipher([OLD_KEY]), Cipher([NEW_KEY, OLD_KEY])
    tenant_id = create_tenant(session=session, name="encrypted").id
    made = deliveries.rotate_secret(
        session=session, tenant_id=tenant_id, overlap=timedelta(0), cipher=old
    )
    mine = select(WebhookSecret.secret).where(WebhookSecret.tenant_id == tenant_id)
    stored = session.scalars(mine).all()
    assert len(stored) == 1 and stored[0].startswith("fernet:") and made.secret not in stored[0]
    now = datetime.now(UTC)
    assert deliveries.signing_secrets(
        session=session, tenant_id=tenant_id, now=now, cipher=old
    ) == [made.secret]
    # Rotation: the new key first, the old one still listed; re-encrypt; then only the new.
    assert deliveries.reencrypt_secrets(session=session, cipher=rotating, tenant_id=tenant_id) == 1
    only_new = Cipher([NEW_KEY])
    assert deliveries.signing_secrets(
        session=session, tenant_id=tenant_id, now=now, cipher=only_new
    ) == [made.secret]
    with pytest.raises(DecryptionError):
        old.decrypt(session.scalars(mine).one())


def test_a_secret_stored_in_clear_before_encryption_is_encrypted_when_read(
    session: Session,
) -> None:
    tenant_id = create_tenant(session=session, name="legacy").id
    now = datetime.now(UTC)
    session.add(WebhookSecret(tenant_id=tenant_id, secret="whsec_legacy", created_at=now))
    session.flush()
    cipher = Cipher([OLD_KEY])
    clear = deliveries.signing_secrets(session=session, tenant_id=tenant_id, now=now, cipher=cipher)
    assert clear == ["whsec_legacy"]
    session.flush()
    (stored,) = session.scalars(
        select(WebhookSecret.secret).where(WebhookSecret.tenant_id == tenant_id)
    ).all()
    assert stored.startswith("fernet:") and cipher.decrypt(stored) == "whsec_legacy"


def test_answers_of_receivers_reached_through_the_allowlist_are_not_shown() -> None:
    allow = safety.Allowlist.parse(["10.0.0.0/8", "hooks.internal"])
    public = safety.parse("https://hooks.example.com/x", allow)
    internal_name = safety.parse("https://hooks.internal/x", allow)
    assert answer_excerpt(public, safety.literal_ip("93.184.216.34"), b"thanks") == "thanks"
    assert answer_excerpt(public, safety.literal_ip("10.1.2.3"), b"secret admin page") is None
    assert answer_excerpt(internal_name, safety.literal_ip("93.184.216.34"), b"secret") is None
