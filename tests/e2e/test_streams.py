"""Many open event streams against the real API server (gunicorn, as `make run` starts it)
must not starve ordinary requests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.stack import gunicorn_api, settings_for

pytestmark = pytest.mark.e2e
STREAMS = 50


@pytest.fixture
def gunicorn(tmp_path: Path, redis_url: str, tiny_models, queue_name: str) -> Iterator[str]:  # type: ignore[no-untyped-def]
    # No worker serves this queue: jobs stay queued, so their streams stay open.
    settings = settings_for(tmp_path, redis_url, tiny_models, queue=queue_name)
    with gunicorn_api(
        settings,
        tmp_path / "gunicorn.log",
        DAIKON_MAX_LONG_REQUESTS=str(STREAMS),
        DAIKON_MAX_LONG_REQUESTS_PER_TENANT=str(STREAMS),
    ) as base:
        yield base


def test_fifty_open_event_streams_leave_ordinary_requests_fast(gunicorn: str) -> None:
    http = requests.Session()
    http.headers["Authorization"] = "Bearer dk_test_admin"
    job = http.post(f"{gunicorn}/v1/jobs", json={"prompt": "waits"}, timeout=10).json()
    events = f"{gunicorn}/v1/jobs/{job['id']}/events"

    opened: list[requests.Response] = []
    lock = threading.Lock()

    def open_stream() -> None:
        r = requests.get(events, headers=http.headers, stream=True, timeout=30)
        first = next(r.iter_lines(decode_unicode=True))  # the stream is live: "id: 1"
        assert r.status_code == 200 and first == "id: 1"
        with lock:
            opened.append(r)

    threads = [threading.Thread(target=open_stream) for _ in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert len(opened) == STREAMS
        started = time.monotonic()
        for _ in range(20):
            r = http.get(f"{gunicorn}/v1/jobs/{job['id']}", timeout=5)
            assert r.status_code == 200 and r.json()["status"] == "queued"
        assert time.monotonic() - started < 10
        # One stream past the cap is refused cleanly instead of taking a thread.
        extra = http.get(events, timeout=5)
        assert extra.status_code == 503
        assert extra.json()["error"]["code"] == "too_many_streams"
    finally:
        for r in opened:
            r.close()
