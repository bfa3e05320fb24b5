"""Uploads at the API, in-process on the real SQLite and Redis (no worker): every file up to the
documented size is accepted in both routes that take them; a JPEG scan bomb is refused before
it is decoded, and only after the tenant's limits; each file is decoded once."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import ImageFile
from sqlalchemy import func, select

from api.inputs import jpeg_scans
from chaos.payloads import noise, padded, scan_bomb
from db import tenants
from db.models import Job
from db.session import session_scope
from server.settings import Settings
from tests.conftest import authed
from tests.stack import ADMIN_KEY

LIMIT = Settings().limits.max_input_bytes  # the documented limit: 4 MiB
EDIT = {"prompt": "a red circle", "mode": "image", "steps": 4, "candidates": 1, "top_k": 1}


@pytest.fixture
def app(make_app) -> Flask:  # type: ignore[no-untyped-def]
    return make_app(openai_wait_seconds=0)


def post_job(client: FlaskClient, body: dict[str, Any], **files: bytes) -> Any:
    data: dict[str, Any] = {"request": json.dumps(body)}
    for role, content in files.items():
        data[role] = (io.BytesIO(content), f"{role}.bin")
    return client.post("/v1/jobs", data=data, content_type="multipart/form-data")


def post_edit(client: FlaskClient, image: bytes) -> Any:
    data = {"prompt": "a red circle", "image": (io.BytesIO(image), "image.bin")}
    return client.post("/v1/images/edits", data=data, content_type="multipart/form-data")


def jobs_in(app: Flask) -> int:
    with session_scope(app.extensions["daikon"].sessions) as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def stored(app: Flask) -> list[str]:
    root = app.extensions["daikon"].settings.data_path
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("size", [LIMIT, LIMIT - 1], ids=["at-limit", "just-under"])
def test_files_up_to_the_documented_limit_are_accepted_in_both_routes(
    app: Flask, fmt: str, size: int
) -> None:
    """Noise (the least compressible content) at 1024x1024, padded to the exact byte size:
    werkzeug's form-memory cap used to refuse most such files with a 413."""
    image = padded(noise((1024, 1024), fmt, quality=100), fmt, size)
    assert len(image) == size
    client = authed(app)
    r = post_job(client, EDIT, image=image)
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["params"]["width"] == 1024
    r = post_edit(client, image)
    # No worker: the job is created and queued; the route stops waiting at once (504 + Location).
    assert r.status_code == 504 and r.get_json()["error"]["code"] == "job_not_finished", r.data
    assert jobs_in(app) == 2


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_file_one_byte_past_the_limit_is_413_in_both_routes(app: Flask, fmt: str) -> None:
    image = padded(noise((1024, 1024), fmt, quality=100), fmt, LIMIT + 1)
    client = authed(app)
    for r in (post_job(client, EDIT, image=image), post_edit(client, image)):
        assert r.status_code == 413, r.data
        assert r.get_json()["error"]["param"] == "image"
    assert jobs_in(app) == 0 and stored(app) == []


def test_jpeg_scans_are_counted_from_markers() -> None:
    baseline = noise((64, 64), "JPEG")
    progressive = noise((64, 64), "JPEG", progressive=True)
    assert jpeg_scans(baseline, 100) == 1
    assert jpeg_scans(progressive, 100) == 10  # libjpeg's standard progression for colour
    bomb = scan_bomb(5000)
    assert jpeg_scans(bomb, 10_000) == 5000 + jpeg_scans(scan_bomb(0), 100)
    assert jpeg_scans(bomb, 64) == 65  # counting stops past the limit
    # Comments whose bytes look like markers are skipped by their lengths.
    assert jpeg_scans(padded(progressive, "JPEG", len(progressive) + 70_000), 100) == 10


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The images the API process decodes (a Pillow load that has pixel data to decode)."""
    seen: list[str] = []
    load = ImageFile.ImageFile.load

    def counting(self: ImageFile.ImageFile) -> Any:
        if self.tile:
            seen.append(str(self.format))
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    yield seen


def test_a_scan_bomb_is_refused_before_it_is_decoded(app: Flask, decodes: list[str]) -> None:
    bomb = scan_bomb(20_000)  # about 240 KiB: seconds of CPU if decoded
    client = authed(app)
    # 422 at Daikon's route, 400 at the OpenAI-compatible one (OpenAI's status for it).
    for status, r in ((422, post_job(client, EDIT, image=bomb)), (400, post_edit(client, bomb))):
        assert r.status_code == status, r.data
        error = r.get_json()["error"]
        assert error["code"] == "too_many_scans" and error["param"] == "image"
        assert "more than 64 scans" in error["message"]
    assert decodes == []
    assert jobs_in(app) == 0 and stored(app) == []


def test_each_upload_is_decoded_once(app: Flask, decodes: list[str]) -> None:
    image = noise((64, 64), "JPEG", progressive=True)
    assert post_edit(authed(app), image).status_code == 504
    assert decodes == ["JPEG"]
    decodes.clear()
    assert post_job(authed(app), EDIT, image=image).status_code == 202
    assert decodes == ["JPEG"]


def test_the_rate_limit_applies_before_any_file_is_read(app: Flask, decodes: list[str]) -> None:
    """A tenant allowed one submission a minute: its first bomb is refused for what it is, every
    later one by the rate limit, unexamined."""
    admin = authed(app)
    tenant = admin.post("/v1/admin/tenants", json={"name": "bomber"}).get_json()
    key = admin.post(f"/v1/admin/tenants/{tenant['id']}/keys", json={}).get_json()["key"]
    with session_scope(app.extensions["daikon"].sessions) as session:
        tenants.set_limits(
            session=session,
            tenant_id=tenant["id"],
            limits=tenants.TenantLimits(submits_per_minute=1),
        )
    client = authed(app, key)
    answers = [post_job(client, EDIT, image=scan_bomb(20_000)) for _ in range(3)]
    answers.append(post_edit(client, scan_bomb(20_000)))
    codes = [f"{r.status_code} {r.get_json()['error']['code']}" for r in answers]
    assert codes == ["422 too_many_scans"] + ["429 rate_limited"] * 3, codes
    assert decodes == [] and jobs_in(app) == 0


def test_an_upload_head_while_the_database_is_down_is_answered_503(make_app: Any) -> None:
    """api/admission.py checks an upload's caller from its head; a database error there is
    answered as the route would answer it (503 database_unavailable), never a dropped
    connection (make chaos's database outage found that)."""
    from api import admission

    app = make_app()
    svc = app.extensions["daikon"]
    database = svc.settings.data_path / "api.db"
    database.unlink()  # a fresh, empty file on the next connect: every query fails
    bind = svc.sessions.kw["bind"]
    bind.dispose()
    head = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v1/jobs",
        "SERVER_NAME": "x",
        "SERVER_PORT": "0",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "100",
        "HTTP_AUTHORIZATION": f"Bearer {ADMIN_KEY}",
    }
    refusal = admission.decide(app, head).refusal
    assert refusal is not None and refusal.startswith(b"HTTP/1.1 503"), refusal
    assert b"database_unavailable" in refusal
