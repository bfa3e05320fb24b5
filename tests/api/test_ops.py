"""Operations: worker heartbeats, GET /v1/models, /readyz and /metrics, on real Redis and real
databases; dependencies made to fail by pointing at closed or silent ports, never by mocks.
(Against a real Celery worker process: tests/e2e/test_ops.py.)"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from api import create_app
from server import heartbeats, stage_metrics
from server.settings import Settings
from tests.metrics import parse, sample, wait_until
from tests.stack import free_port, migrate
from worker.heartbeat import Heartbeat

ADMIN_KEY = "dk_test_ops_admin"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
FAST = {"steps": 2, "candidates": 2, "top_k": 1, "seed": 11}


def api_settings(tmp: Path, **kw: Any) -> Settings:
    """An API on its own SQLite file and queue, with no worker behind it."""
    values: dict[str, Any] = {
        "data_dir": tmp,
        "database_url": f"sqlite:///{tmp / 'ops.db'}",
        "admin_key": ADMIN_KEY,
        "queue": f"daikon-ops-{uuid.uuid4().hex[:10]}",
    }
    return Settings(**{**values, **kw})


def ready_app(settings: Settings) -> Flask:
    if settings.sqlalchemy_url.startswith("sqlite"):
        migrate(settings.sqlalchemy_url)
    return create_app(settings)


# --- heartbeats, without Celery ----------------------------------------------------------------


def test_a_heartbeat_lists_its_worker_until_it_stops_or_expires(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = api_settings(
        tmp_path, models={"default": {"pipeline": "x"}, "other": {"pipeline": "y"}}
    )
    hostname = f"{settings.services.queue}@test-host"
    beat = Heartbeat(
        redis_client,
        hostname=hostname,
        models=["default"],
        queues=[settings.queue_for("default")],
        interval=0.05,
    )

    def mine() -> list[heartbeats.WorkerInfo]:
        return [w for w in heartbeats.live_workers(redis_client) if w.hostname == hostname]

    try:
        beat.start()
        wait_until(lambda: len(mine()) == 1, 5, "the first heartbeat")
        first = mine()[0]
        assert (first.models, first.pid) == (["default"], os.getpid())
        assert first.queues == [f"{settings.services.queue}.default"]
        wait_until(lambda: mine()[0].seen_at > first.seen_at, 5, "a second heartbeat")
        assert mine()[0].started_at == first.started_at
        assert 0 < redis_client.ttl(heartbeats.worker_key(hostname)) <= heartbeats.TTL_SECONDS
        live = heartbeats.for_deployment(settings, heartbeats.live_workers(redis_client))
        assert heartbeats.serving(settings, live) == {"default": 1, "other": 0}
    finally:
        beat.stop()
    assert mine() == []  # gone at once, not after the TTL
    assert not redis_client.exists(heartbeats.worker_key(hostname))

    # A worker killed without a goodbye drops out when its key expires, index entry included.
    heartbeats.write(redis_client, first, ttl=1)
    assert len(mine()) == 1
    time.sleep(1.2)
    assert mine() == []
    assert redis_client.zscore(heartbeats.INDEX_KEY, hostname) is None


# --- /readyz and /metrics with no worker ----------------------------------------------------


def test_readyz_without_a_worker_heartbeat_is_503_naming_workers(
    tmp_path: Path, redis_url: str
) -> None:
    client = ready_app(api_settings(tmp_path, redis_url=redis_url)).test_client()
    r = client.get("/readyz")
    assert r.status_code == 503
    body = r.get_json()
    assert body["error"] == {
        "type": "service_unavailable",
        "code": "not_ready",
        "message": "not ready; failing checks: workers",
        "param": None,
    }
    checks = body["checks"]
    assert list(checks) == ["database", "broker", "storage", "workers"]
    assert [checks[n]["ok"] for n in checks] == [True, True, True, False]
    assert "no worker heartbeat in the last 30 s" in checks["workers"]["error"]
    assert checks["storage"]["backend"] == "local"
    assert client.get("/healthz").status_code == 200  # liveness is not readiness


def test_readyz_with_the_database_down_is_503_naming_database(
    tmp_path: Path, redis_url: str
) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/test"  # nothing listens there
    client = ready_app(
        api_settings(tmp_path, redis_url=redis_url, database_url=closed)
    ).test_client()
    started = time.monotonic()
    r = client.get("/readyz")
    assert time.monotonic() - started < 3
    assert r.status_code == 503
    body = r.get_json()
    assert body["error"]["message"] == "not ready; failing checks: database, workers"
    assert body["checks"]["database"]["ok"] is False
    assert "OperationalError" in body["checks"]["database"]["error"]
    assert body["checks"]["broker"]["ok"] is True


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word: a hung dependency."""
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def test_readyz_answers_within_3_s_when_the_database_and_redis_hang(
    tmp_path: Path, silent_port: int
) -> None:
    settings = api_settings(
        tmp_path,
        database_url=f"postgresql://postgres@127.0.0.1:{silent_port}/test",
        redis_url=f"redis://127.0.0.1:{silent_port}/0",
    )
    client = ready_app(settings).test_client()
    started = time.monotonic()
    r = client.get("/readyz")
    elapsed = time.monotonic() - started
    assert r.status_code == 503
    assert elapsed < 3, f"/readyz took {elapsed:.1f} s"
    checks = r.get_json()["checks"]
    assert {n for n, c in checks.items() if not c["ok"]} == {"database", "broker", "workers"}
    assert checks["storage"]["ok"] is True


def test_metrics_count_queued_jobs_and_their_broker_lists_by_priority(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    settings = api_settings(tmp_path, redis_url=redis_url)
    client = ready_app(settings).test_client()
    try:
        for priority in (5, 5, 9, 0):
            r = client.post("/v1/jobs", json={"prompt": "x", "priority": priority}, headers=AUTH)
            assert r.status_code == 202, r.get_data(as_text=True)
        stage_metrics.record(redis_client, settings.services.queue, {"inference_seconds": 0.03})
        # Two jobs of one batch, recorded in one round trip: each counts.
        stage_metrics.record(
            redis_client,
            settings.services.queue,
            {"inference_seconds": 0.05, "upload_seconds": 400.0},
            {"inference_seconds": 0.2},
        )
        r = client.get("/metrics")
        assert r.status_code == 200
        assert r.content_type.startswith("text/plain")
        m = parse(r.get_data(as_text=True))
    finally:
        for key in redis_client.scan_iter(stage_metrics.stage_key(settings.services.queue, "*")):
            redis_client.delete(key)
        for key in redis_client.scan_iter(f"{settings.services.queue}*"):
            redis_client.delete(key)

    jobs = {
        s: sample(m, "daikon_jobs", status=s)
        for s in ("queued", "running", "succeeded", "failed", "canceled")
    }
    assert jobs == {"queued": 4, "running": 0, "succeeded": 0, "failed": 0, "canceled": 0}
    depth = {
        p: sample(m, "daikon_queue_depth", model="default", priority=str(p)) for p in range(10)
    }
    assert depth == {0: 1, 1: 0, 2: 0, 3: 0, 4: 0, 5: 2, 6: 0, 7: 0, 8: 0, 9: 1}
    assert sample(m, "daikon_workers", model="default") == 0

    def bucket(stage: str, le: str) -> float:
        return sample(m, "daikon_stage_seconds_bucket", stage=stage, le=le)

    # Bounds are inclusive: 0.05 lands in le="0.05".
    assert [bucket("inference", le) for le in ("0.05", "0.1", "0.25", "300.0", "+Inf")] == [
        2,
        2,
        3,
        3,
        3,
    ]
    assert sample(m, "daikon_stage_seconds_count", stage="inference") == 3
    assert sample(m, "daikon_stage_seconds_sum", stage="inference") == pytest.approx(0.28)
    assert (bucket("upload", "300.0"), bucket("upload", "+Inf")) == (0, 1)
    assert sample(m, "daikon_stage_seconds_count", stage="ranking") == 0  # present before any
    assert sample(m, "daikon_metrics_source_up", source="database") == 1
    assert sample(m, "daikon_metrics_source_up", source="redis") == 1


def test_metrics_still_answer_with_redis_down(tmp_path: Path) -> None:
    settings = api_settings(tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    r = ready_app(settings).test_client().get("/metrics")
    assert r.status_code == 200
    m = parse(r.get_data(as_text=True))
    assert sample(m, "daikon_metrics_source_up", source="redis") == 0
    assert sample(m, "daikon_metrics_source_up", source="database") == 1
    assert sample(m, "daikon_jobs", status="queued") == 0
    assert not any(name.startswith("daikon_queue_depth") for name, _ in m)
