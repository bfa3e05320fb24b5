"""Retention and per-tenant storage, on real SQLite and PostgreSQL with real storage (a local
folder and S3 over HTTP via moto): expired jobs lose their rows and objects (canceled first),
unexpired ones keep theirs, a crash halfway is finished by the next sweep with nothing left
behind, the tenant's stored bytes stay exact, and a tenant at its quota is refused before
anything is stored."""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from daikon.contract import JobStatus
from daikon.webhooks import DeliveryStatus
from db import jobs, retention, tenants
from db.models import Job, JobImage, PendingDeletion, Tenant, WebhookDelivery, utcnow
from db.session import make_session_factory, session_scope
from server.settings import Settings
from server.storage import ImageStore, LocalStore, S3Store, image_key, input_key
from tests.conftest import authed
from tests.factories import image, job_params
from worker.sweeper import Purged, purge_once, retention_periods

# Far enough in the past that no other test's job is this old: the sweeps act on the whole
# (shared, per-run) database, and these tests look only at their own jobs.
LONG_AGO = timedelta(days=3000)
PERIOD_HOURS = 2000 * 24.0


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    if request.param == "local":
        return LocalStore(tmp_path / "images")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Store(
        bucket=f"retention-{uuid.uuid4().hex[:10]}",
        endpoint_url=endpoint,
        region="us-east-1",
        presign_seconds=600,
    )


@pytest.fixture
def sessions(db_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(db_engine)


@pytest.fixture
def tenant_id(sessions: sessionmaker[Session]) -> Iterator[str]:
    with session_scope(sessions) as s:
        tid = tenants.create_tenant(session=s, name=f"ret-{uuid.uuid4().hex[:10]}").id
    yield tid
    with session_scope(sessions) as s:
        s.delete(s.get(Tenant, tid))


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "retain_canceled_hours": PERIOD_HOURS,
        "retain_failed_hours": PERIOD_HOURS,
        "retain_succeeded_hours": 0,
        "retention_batch": 10_000,
    }
    return Settings(**{**values, **overrides})


def sweep(every: Settings, sessions: sessionmaker[Session], store: ImageStore) -> Purged:
    """A round of retention, then the objects it recorded deleted once their grace is over
    (as the next rounds would: a round at `later()` that expires nothing more)."""
    purge_once(every, sessions, store)
    forever = settings(retain_canceled_hours=0, retain_failed_hours=0)
    return purge_once(forever, sessions, store, now=later())


def later() -> datetime:
    return utcnow() + retention.OBJECT_GRACE + timedelta(seconds=1)


def stored_bytes(sessions: sessionmaker[Session], tenant_id: str) -> int:
    with session_scope(sessions) as s:
        return int(s.scalar(select(Tenant.stored_bytes).where(Tenant.id == tenant_id)) or 0)


def pending(sessions: sessionmaker[Session], job_ids: list[str]) -> list[str]:
    with session_scope(sessions) as s:
        return list(
            s.scalars(select(PendingDeletion.key).where(PendingDeletion.job_id.in_(job_ids)))
        )


def rows_of(sessions: sessionmaker[Session], job_ids: list[str]) -> tuple[set[str], int]:
    """Which of the jobs still have rows, and how many image rows they have."""
    with session_scope(sessions) as s:
        left = set(s.scalars(select(Job.id).where(Job.id.in_(job_ids))))
        images = s.scalar(
            select(func.count()).select_from(JobImage).where(JobImage.job_id.in_(job_ids))
        )
    return left, int(images or 0)


def edit_job(
    sessions: sessionmaker[Session], store: ImageStore, tenant_id: str, *, size: int = 1000
) -> tuple[str, list[str]]:
    """A queued edit job with a stored input image of `size` bytes (as api/inputs.py stores
    one: under the job's own id, counted to the tenant in the row's transaction)."""
    job_id = str(uuid.uuid4())
    key = input_key(Settings(), job_id, "image")
    store.put(key, b"i" * size, "image/png")
    record = {
        "key": key,
        "width": 32,
        "height": 32,
        "content_type": "image/png",
        "byte_size": size,
        "sha256": "x",
    }
    with session_scope(sessions) as s:
        jobs.create(
            session=s,
            params=job_params(),
            tenant_id=tenant_id,
            options=jobs.JobOptions(job_id=job_id, inputs={"image": record}),
        )
    return job_id, [key]


def end(
    sessions: sessionmaker[Session],
    job_id: str,
    status: JobStatus,
    *,
    ago: timedelta,
    store: ImageStore | None = None,
    images: int = 0,
) -> list[str]:
    """Run the job to `status` (with `images` stored outputs when it succeeds), finished
    `ago`; the keys of its outputs."""
    keys = [image_key("", job_id, rank) for rank in range(1, images + 1)]
    for key in keys:
        assert store is not None
        store.put(key, b"o" * 500, "image/png")
    with session_scope(sessions) as s:
        if status is JobStatus.canceled:
            jobs.cancel(session=s, job_id=job_id)
        else:
            jobs.claim(session=s, job_id=job_id, worker="w:1")
            if status is JobStatus.succeeded:
                made = [
                    jobs.NewImage(
                        **{**vars(image(rank, 0.5)), "storage_key": key, "byte_size": 500}
                    )
                    for rank, key in enumerate(keys, start=1)
                ]
                assert jobs.succeed(session=s, job_id=job_id, seed=1, images=made, metrics={})
            else:
                assert jobs.fail(session=s, job_id=job_id, code="x", message="x", metrics={})
        s.execute(update(Job).where(Job.id == job_id).values(finished_at=utcnow() - ago))
    return keys


def text_job(sessions: sessionmaker[Session], tenant_id: str) -> str:
    with session_scope(sessions) as s:
        return jobs.create(session=s, params=job_params(), tenant_id=tenant_id).id


def test_expired_canceled_and_failed_jobs_lose_rows_and_objects_unexpired_ones_keep_theirs(
    sessions: sessionmaker[Session], store: ImageStore, tenant_id: str
) -> None:
    old_edit, old_edit_keys = edit_job(sessions, store, tenant_id, size=4000)
    end(sessions, old_edit, JobStatus.canceled, ago=LONG_AGO)  # the canceled edit
    old_failed, _ = edit_job(sessions, store, tenant_id, size=700)
    end(sessions, old_failed, JobStatus.failed, ago=LONG_AGO)
    recent_edit, recent_keys = edit_job(sessions, store, tenant_id, size=300)
    end(sessions, recent_edit, JobStatus.canceled, ago=timedelta(hours=1))
    old_success = text_job(sessions, tenant_id)
    success_keys = end(
        sessions, old_success, JobStatus.succeeded, ago=LONG_AGO, store=store, images=2
    )
    assert stored_bytes(sessions, tenant_id) == 4000 + 700 + 300 + 2 * 500

    done = purge_once(settings(), sessions, store)
    assert done.jobs >= 2
    assert rows_of(sessions, [old_edit, old_failed])[0] == set()  # a client gets 404 now
    # The objects outlive the rows by the grace: an answer an API process still holds in
    # memory (its finished-job cache, up to 30 s) never points at a missing object.
    assert store.exists(old_edit_keys[0])
    assert sorted(pending(sessions, [old_edit])) == old_edit_keys
    done = purge_once(settings(), sessions, store, now=later())
    assert done.objects >= 2 and done.left == 0

    left, images = rows_of(sessions, [old_edit, old_failed, recent_edit, old_success])
    assert left == {recent_edit, old_success}  # succeeded: kept forever by default
    assert images == 2
    assert not store.exists(old_edit_keys[0])
    assert store.exists(recent_keys[0]) and all(store.exists(k) for k in success_keys)
    assert stored_bytes(sessions, tenant_id) == 300 + 2 * 500  # exact, not approximate
    assert pending(sessions, [old_edit, old_failed]) == []

    # With a succeeded period, the old success goes too, its images with it.
    sweep(settings(retain_succeeded_hours=PERIOD_HOURS), sessions, store)
    assert rows_of(sessions, [old_success]) == (set(), 0)
    assert not any(store.exists(k) for k in success_keys)
    assert stored_bytes(sessions, tenant_id) == 300
    with session_scope(sessions) as s:
        jobs.delete(session=s, job_id=recent_edit)
    store.delete(recent_keys[0])
    assert stored_bytes(sessions, tenant_id) == 0


def test_canceled_go_before_failed_and_failed_before_succeeded(
    sessions: sessionmaker[Session], store: ImageStore, tenant_id: str
) -> None:
    failed = text_job(sessions, tenant_id)
    end(sessions, failed, JobStatus.failed, ago=LONG_AGO + timedelta(days=5))  # the oldest
    succeeded = text_job(sessions, tenant_id)
    end(
        sessions,
        succeeded,
        JobStatus.succeeded,
        ago=LONG_AGO + timedelta(days=9),
        store=store,
        images=1,
    )
    canceled = text_job(sessions, tenant_id)
    end(sessions, canceled, JobStatus.canceled, ago=LONG_AGO)
    every = settings(retain_succeeded_hours=PERIOD_HOURS, retention_batch=1)
    ids = [failed, succeeded, canceled]
    purge_once(every, sessions, store)
    assert rows_of(sessions, ids)[0] == {failed, succeeded}
    purge_once(every, sessions, store)
    assert rows_of(sessions, ids)[0] == {succeeded}
    purge_once(every, sessions, store)
    assert rows_of(sessions, ids)[0] == set()


class Crash(BaseException):
    """The process dying (kill -9 runs no handler; nothing catches this either)."""


class CrashingStore:
    """A real store that dies after deleting `survive` of the objects `watched` (others in
    the shared database's queue pass through)."""

    def __init__(self, store: ImageStore, watched: list[str], survive: int):
        self.store, self.watched, self.left = store, set(watched), survive

    def delete(self, key: str) -> None:
        if key in self.watched:
            if self.left == 0:
                raise Crash()
            self.left -= 1
        self.store.delete(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_sweep_that_dies_between_rows_and_objects_is_finished_by_the_next(
    sessions: sessionmaker[Session], store: ImageStore, tenant_id: str
) -> None:
    a, a_keys = edit_job(sessions, store, tenant_id, size=100)
    end(sessions, a, JobStatus.canceled, ago=LONG_AGO)
    b = text_job(sessions, tenant_id)
    b_keys = end(sessions, b, JobStatus.succeeded, ago=LONG_AGO, store=store, images=3)
    every = settings(retain_succeeded_hours=PERIOD_HOURS)
    keys = a_keys + b_keys

    purge_once(every, sessions, store)  # the rows go; the objects wait out their grace
    crashing = CrashingStore(store, keys, survive=1)
    with pytest.raises(Crash):  # a later round deletes one object, then the process dies
        purge_once(every, sessions, crashing, now=later())  # type: ignore[arg-type]
    assert rows_of(sessions, [a, b]) == (set(), 0)  # no client is served a job now (404)
    still = {k for k in keys if store.exists(k)}
    assert len(still) == len(keys) - 1
    # Every object that exists is recorded (the deleted one may or may not be: deleting it
    # again is harmless); nothing is left that no row names.
    assert set(pending(sessions, [a, b])) >= still
    assert stored_bytes(sessions, tenant_id) == 0

    purge_once(every, sessions, store, now=later())  # the next round (any worker's) finishes
    assert not any(store.exists(k) for k in keys)
    assert pending(sessions, [a, b]) == []


def test_a_sweep_that_dies_before_its_commit_changes_nothing(
    sessions: sessionmaker[Session], store: ImageStore, tenant_id: str
) -> None:
    a, a_keys = edit_job(sessions, store, tenant_id, size=100)
    end(sessions, a, JobStatus.canceled, ago=LONG_AGO)
    with pytest.raises(Crash), session_scope(sessions) as s:
        assert (
            retention.expire(
                session=s, periods=retention_periods(settings()), now=utcnow(), limit=10_000
            ).jobs
            >= 1
        )
        raise Crash()  # rows deleted and objects recorded, but never committed
    assert rows_of(sessions, [a])[0] == {a}
    assert store.exists(a_keys[0]) and pending(sessions, [a]) == []
    assert stored_bytes(sessions, tenant_id) == 100
    sweep(settings(), sessions, store)
    assert rows_of(sessions, [a])[0] == set() and not store.exists(a_keys[0])


def test_a_job_whose_retry_shares_its_inputs_or_whose_webhook_is_pending_is_kept(
    sessions: sessionmaker[Session], store: ImageStore, tenant_id: str
) -> None:
    original, keys = edit_job(sessions, store, tenant_id, size=100)
    end(sessions, original, JobStatus.canceled, ago=LONG_AGO)
    with session_scope(sessions) as s:
        again = jobs.retry(session=s, job_id=original).id
    hooked = text_job(sessions, tenant_id)
    end(sessions, hooked, JobStatus.failed, ago=LONG_AGO)
    with session_scope(sessions) as s:
        s.add(
            WebhookDelivery(
                id=f"msg_{uuid.uuid4().hex}",
                job_id=hooked,
                tenant_id=tenant_id,
                event="job.failed",
                url="https://example.com/h",
                payload="{}",
                status=DeliveryStatus.pending,
                max_attempts=8,
            )
        )
    assert stored_bytes(sessions, tenant_id) == 100  # the retry's inputs are not counted twice

    sweep(settings(), sessions, store)
    assert rows_of(sessions, [original, again, hooked])[0] == {original, again, hooked}
    assert store.exists(keys[0])  # the queued retry will read it

    end(sessions, again, JobStatus.canceled, ago=LONG_AGO)
    with session_scope(sessions) as s:
        s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == hooked)
            .values(status=DeliveryStatus.failed)
        )
    sweep(settings(), sessions, store)  # the retry goes (it owns nothing), the hook's job
    assert rows_of(sessions, [again, hooked])[0] == set()
    with session_scope(sessions) as s:
        assert (
            s.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.job_id == hooked)
            )
            == 0
        )
    assert store.exists(keys[0])
    sweep(settings(), sessions, store)  # then the original, with the inputs
    assert rows_of(sessions, [original])[0] == set() and not store.exists(keys[0])
    assert stored_bytes(sessions, tenant_id) == 0


def test_the_quota_refuses_at_it_and_past_it_with_inputs(
    sessions: sessionmaker[Session], store: ImageStore, tenant_id: str
) -> None:
    edit_job(sessions, store, tenant_id, size=600)
    with session_scope(sessions) as s:
        retention.check_quota(session=s, tenant_id=tenant_id, default_quota=1000, incoming=400)
        with pytest.raises(retention.StorageQuotaExceeded) as refused:
            retention.check_quota(session=s, tenant_id=tenant_id, default_quota=1000, incoming=401)
        assert refused.value.status == 403 and refused.value.code == "storage_quota_exceeded"
        assert "600 bytes" in refused.value.message and "1000 bytes" in refused.value.message
        retention.check_quota(session=s, tenant_id=tenant_id, default_quota=0, incoming=10**12)
        retention.set_quota(session=s, tenant_id=tenant_id, quota_bytes=600)  # the admin's
    with session_scope(sessions) as s:
        with pytest.raises(retention.StorageQuotaExceeded):  # at it: even a text job
            retention.check_quota(session=s, tenant_id=tenant_id, default_quota=0)
        found = retention.usage(session=s, tenant_id=tenant_id, default_quota=0)
        assert (found.stored_bytes, found.quota_bytes, found.own_quota) == (600, 600, True)


# --- at the API -----------------------------------------------------------------------------


@pytest.fixture
def app(make_app) -> Flask:  # type: ignore[no-untyped-def]
    return make_app(tenant_storage_quota_bytes=0)


def noise_png(side: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, format="PNG")
    return buf.getvalue()


def post_edit(client: FlaskClient, picture: bytes) -> Any:
    body = {"prompt": "a red circle", "mode": "image", "steps": 4, "candidates": 1, "top_k": 1}
    data = {"request": json.dumps(body), "image": (io.BytesIO(picture), "image.png")}
    return client.post("/v1/jobs", data=data, content_type="multipart/form-data")


def files_in(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_a_tenant_at_its_quota_is_refused_with_its_code_and_nothing_is_stored(
    app: Flask, tmp_path: Path
) -> None:
    root = authed(app)
    tenant = root.post("/v1/admin/tenants", json={"name": "hoarder"}).get_json()
    key = root.post(f"/v1/admin/tenants/{tenant['id']}/keys", json={}).get_json()["key"]
    client = authed(app, key)
    assert client.get("/v1/usage").get_json()["storage_quota_bytes"] is None  # deployment: none
    set_quota = root.put(
        f"/v1/admin/tenants/{tenant['id']}/storage-quota", json={"storage_quota_bytes": 40_000}
    )
    assert set_quota.status_code == 200, set_quota.get_json()
    assert set_quota.get_json()["own_quota"] is True
    assert (
        client.put(
            f"/v1/admin/tenants/{tenant['id']}/storage-quota", json={"storage_quota_bytes": 10**12}
        ).status_code
        == 403
    )

    picture = noise_png()  # ~12 KiB stored
    accepted, refusal = 0, None
    for _ in range(10):
        r = post_edit(client, picture)
        if r.status_code != 202:
            refusal = r
            break
        accepted += 1
    assert refusal is not None and 2 <= accepted <= 4
    error = refusal.get_json()["error"]
    assert (refusal.status_code, error["code"], error["type"]) == (
        403,
        "storage_quota_exceeded",
        "permission_error",
    )
    assert "storage quota is 40000 bytes" in error["message"]

    usage = client.get("/v1/usage").get_json()
    images = tmp_path / "images"
    on_disk = files_in(images)
    assert len(on_disk) == accepted  # the refused submission stored nothing
    assert usage["stored_bytes"] == sum(p.stat().st_size for p in on_disk)
    assert usage["storage_quota_bytes"] == 40_000 and usage["own_quota"] is True
    assert usage["retention"] == {
        "canceled_hours": 24.0,
        "failed_hours": 168.0,
        "succeeded_hours": None,
    }
    with session_scope(app.extensions["daikon"].sessions) as s:
        assert (
            s.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant["id"]))
            == accepted
        )

    # A text job (no inputs) is refused too once the tenant is at the quota; raising it lets
    # the tenant submit again.
    at = usage["stored_bytes"]
    root.put(f"/v1/admin/tenants/{tenant['id']}/storage-quota", json={"storage_quota_bytes": at})
    r = client.post("/v1/jobs", json={"prompt": "a red circle", "steps": 4})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "storage_quota_exceeded"
    root.put(f"/v1/admin/tenants/{tenant['id']}/storage-quota", json={"storage_quota_bytes": None})
    assert client.post("/v1/jobs", json={"prompt": "a red circle", "steps": 4}).status_code == 202


def test_the_dashboard_shows_a_tenants_bytes_and_quota_and_an_admin_sets_it(app: Flask) -> None:
    from tests.apps import login

    root = authed(app)
    tenant = root.post("/v1/admin/tenants", json={"name": "shown"}).get_json()
    key = root.post(f"/v1/admin/tenants/{tenant['id']}/keys", json={}).get_json()["key"]
    assert post_edit(authed(app, key), noise_png()).status_code == 202
    stored = authed(app, key).get("/v1/usage").get_json()["stored_bytes"]
    assert stored > 10_000

    browser, csrf = login(app)
    page = browser.get(f"/admin/tenants/{tenant['id']}").text
    assert f'data-bytes="{stored}"' in page and "none (the deployment's)" in page
    saved = browser.post(
        f"/admin/tenants/{tenant['id']}/storage-quota",
        data={"storage_quota_bytes": "123456", "csrf_token": csrf},
    )
    assert saved.status_code == 303
    page = browser.get(f"/admin/tenants/{tenant['id']}").text
    assert 'data-bytes="123456"' in page and "(the deployment" not in page
    bad = browser.post(
        f"/admin/tenants/{tenant['id']}/storage-quota",
        data={"storage_quota_bytes": "-1", "csrf_token": csrf},
    )
    assert bad.status_code == 422
    usage = browser.get("/admin/usage").text
    assert f'data-bytes="{stored}"' in usage
    assert authed(app, key).get("/v1/usage").get_json()["storage_quota_bytes"] == 123456
