"""Signed image URLs are capabilities: whoever reads one can fetch the image, without a key,
until it expires. The real server (gunicorn with gunicorn.conf.py, as `make run` serves it)
must not write them to its access log, however the request spells the parameter, nor a key."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from PIL import Image

from api.access_log import DevRequestHandler
from db import jobs
from db.session import make_engine, make_session_factory, session_scope
from server.image_urls import redact_query, redact_url
from server.storage import LocalStore
from tests.stack import ADMIN_KEY, gunicorn_api, settings_for

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.e2e
def test_gunicorns_access_log_shows_no_signature_and_no_key(
    tmp_path: Path, redis_url: str, tiny_models: tuple[Path, Path]
) -> None:
    settings = settings_for(tmp_path, redis_url, tiny_models)
    log_path = tmp_path / "gunicorn.log"
    with gunicorn_api(settings, log_path) as base:
        r = requests.post(
            f"{base}/v1/jobs", json={"prompt": "a red circle"}, headers=ADMIN, timeout=10
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        data = png()
        LocalStore(settings.local_storage_path).put(f"t/{job_id}/1.png", data, "image/png")
        sessions = make_session_factory(make_engine(settings.sqlalchemy_url))
        with session_scope(sessions) as s:
            assert jobs.claim(session=s, job_id=job_id, worker="test:1")
            image = jobs.NewImage(
                rank=1,
                clip_score=30.0,
                seed=1,
                width=8,
                height=8,
                content_type="image/png",
                storage_key=f"t/{job_id}/1.png",
                byte_size=len(data),
            )
            assert jobs.succeed(session=s, job_id=job_id, seed=1, images=[image], metrics={})
        job = requests.get(f"{base}/v1/jobs/{job_id}", headers=ADMIN, timeout=10).json()
        url = job["images"][0]["url"]
        url = url if url.startswith("http") else base + url
        sig = parse_qs(urlsplit(url).query)["sig"][0]
        assert len(sig) >= 20

        fetched = requests.get(url, timeout=10)  # as a browser's <img> would
        assert fetched.status_code == 200 and fetched.content == data
        respelled = url.replace("&sig=", "&%73ig=")  # the same capability, spelled otherwise
        assert requests.get(respelled, timeout=10).content == data
        # Carried as a referrer to another request, and with a key in the headers.
        requests.get(f"{base}/healthz", headers={"Referer": url, **ADMIN}, timeout=10)

        deadline = time.monotonic() + 30
        while log_path.read_text(errors="replace").count(f"/v1/jobs/{job_id}/images/1") < 3:
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.2)
    log = log_path.read_text(errors="replace")
    fetches = [line for line in log.splitlines() if f'"GET /v1/jobs/{job_id}/images/1' in line]
    assert len(fetches) == 2, log
    assert all('/images/1?[redacted] HTTP/1.1" 200' in line for line in fetches), fetches
    assert sig not in log
    assert ADMIN_KEY not in log
    assert any("/healthz" in line and "[redacted]" in line for line in log.splitlines()), log


@pytest.mark.parametrize("expires", ["9" * 5000, "9" * 13, "-1", "\uff11\uff12", ""])
def test_an_odd_expiry_is_a_404_like_a_wrong_signature(make_app: Any, expires: str) -> None:
    r = make_app().test_client().get(f"/v1/jobs/x/images/1?expires={expires}&sig=x")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"


def test_what_the_redaction_keeps_and_hides() -> None:
    assert redact_query("expires=1700000000&sig=abc") == "[redacted]"
    assert redact_query("SIG=abc") == "[redacted]"
    assert redact_query("expires=1&%73ig=abc") == "[redacted]"
    assert redact_query("x=1;sig=abc") == "[redacted]"
    assert redact_query("status=queued&signal=1") == "status=queued&signal=1"
    line = "GET /v1/jobs/j/images/1?expires=1&sig=abc HTTP/1.1"
    assert redact_url(line) == "GET /v1/jobs/j/images/1?[redacted] HTTP/1.1"
    assert redact_url("http://h/p?sig=abc#frag") == "http://h/p?[redacted]#frag"
    assert redact_url("/admin/jobs?q=a") == "/admin/jobs?q=a"
    assert redact_url("/healthz") == "/healthz"


def test_the_development_server_logs_no_signature(capsys: pytest.CaptureFixture[str]) -> None:
    """werkzeug's server (the tests' in-process API) logs through DevRequestHandler."""
    import logging

    from werkzeug.serving import make_server

    from tests.stack import free_port

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("werkzeug")
    keep, level = Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    server = make_server("127.0.0.1", free_port(), app, request_handler=DevRequestHandler)
    import threading

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_port
        r = requests.get(
            f"http://127.0.0.1:{port}/v1/jobs/j/images/1?expires=9&sig=SECRETSIG", timeout=10
        )
        assert r.text == "ok"
        deadline = time.monotonic() + 10
        while not any("/v1/jobs/j/images/1" in m for m in records):
            assert time.monotonic() < deadline, records
            time.sleep(0.05)
    finally:
        server.shutdown()
        logger.removeHandler(keep)
        logger.setLevel(level)
    assert not any("SECRETSIG" in m for m in records), records
    assert any("/v1/jobs/j/images/1?[redacted]" in m for m in records), records
