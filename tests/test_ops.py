"""Operations: worker heartbeats, GET /v1/models, /readyz and /metrics, on real Redis, real
databases and a real Celery worker; dependencies made to fail by pointing at closed or silent
ports, never by mocks."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from server import heartbeats, stage_metrics
from server.settings import Settings
from tests.stack import Stack, free_port, migrate, running_stack
from worker.heartbeat import Heartbeat

ADMIN_KEY = "dk_test_ops_admin"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
FAST = {"steps": 2, "candidates": 2, "top_k": 1, "seed": 11}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text page, by (sample name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


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


# --- a real worker that serves some of the models ---------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """Three models; the worker serves `default` and `broken` (whose weights do not exist), and
    no worker serves `other`."""
    tmp = tmp_path_factory.mktemp("ops")
    sd, clip = (str(p) for p in tiny_models)
    settings = Settings(
        data_dir=tmp,
        redis_url=redis_url,
        queue=f"daikon-ops-{uuid.uuid4().hex[:8]}",
        models={
            "default": {"pipeline": sd, "clip": clip},
            "other": {"pipeline": sd, "clip": clip},
            "broken": {"pipeline": str(tmp / "no-such-model"), "clip": clip},
        },
        worker_models="default,broken",
        torch_threads=1,
        admin_key=ADMIN_KEY,
    )
    with running_stack(settings, tmp) as s:
        wait_until(
            lambda: s.http.get(s.url("/readyz"), timeout=5).status_code == 200,
            60,
            f"the worker's heartbeat; worker log:\n{s.worker.log_tail()}",
        )
        yield s


def models(stack: Stack) -> dict[str, dict[str, Any]]:
    r = stack.http.get(stack.url("/v1/models"), timeout=10)
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["models"]}


def scrape(stack: Stack) -> Samples:
    r = requests.get(stack.url("/metrics"), timeout=10)  # no API key needed
    assert r.status_code == 200, r.text
    return parse(r.text)


def test_readyz_is_ready_with_a_running_worker(stack: Stack) -> None:
    r = requests.get(stack.url("/readyz"), timeout=10)  # no API key needed
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready"
    assert all(c["ok"] for c in body["checks"].values())
    assert body["checks"]["workers"]["count"] == 1
    assert body["checks"]["workers"]["unserved_models"] == ["other"]


def test_a_job_for_a_model_no_worker_serves_waits_queued_while_later_jobs_run(
    stack: Stack,
) -> None:
    assert requests.get(stack.url("/v1/models"), timeout=10).status_code == 401
    waiting = stack.submit(prompt="for nobody", model="other", **FAST)
    assert (waiting["status"], waiting["queue_position"]) == ("queued", 0)
    later = stack.wait(stack.submit(prompt="a red circle", model="default", **FAST)["id"])
    assert later["status"] == "succeeded", later["error"]

    still = stack.get(waiting["id"])
    assert (still["status"], still["queue_position"], still["started_at"]) == ("queued", 0, None)
    listed = models(stack)
    assert list(listed) == ["default", "other", "broken"]
    cpu = {
        "max_job_cost": 4.0,
        "images_per_call": 4,
        "seconds_per_cost": 120.0,
        "tenant_queued_cost": 200.0,
    }
    capabilities = listed["default"].pop("capabilities")
    assert capabilities["pipeline_class"] == "StableDiffusionPipeline"
    assert listed["default"] == {
        "name": "default",
        "default": True,
        "workers": 1,
        "queued": 0,
        "device": "cpu",
        "limits": cpu,
        "load_errors": {},
    }
    assert listed["broken"]["workers"] == 1
    queued_other = stack.http.get(stack.url("/v1/jobs?status=queued&model=other"), timeout=10)
    assert listed["other"] == {
        "name": "other",
        "default": False,
        "workers": 0,
        "queued": len(queued_other.json()["jobs"]),
        "device": None,
        "limits": None,
        "load_errors": {},
        "capabilities": None,
    }
    assert listed["other"]["queued"] >= 1


def test_metrics_after_jobs_ran_on_a_real_worker(stack: Stack) -> None:
    before = scrape(stack)
    ids = [stack.submit(prompt=f"a blue square {n}", **FAST)["id"] for n in range(3)]
    ids.append(stack.submit(prompt="no weights", model="broken", **FAST)["id"])
    waiting = stack.submit(prompt="for nobody, urgently", model="other", priority=8, **FAST)
    done = [stack.wait(i) for i in ids]
    assert [j["status"] for j in done] == ["succeeded"] * 3 + ["failed"]
    assert done[3]["error"]["code"] == "model_load_failed"
    # The worker's next heartbeat (within HEARTBEAT_SECONDS) reports the failed load and stops
    # counting itself as serving `broken`; wait for it so the gauges below are settled.
    wait_until(
        lambda: bool(models(stack)["broken"]["load_errors"]),
        90,
        "the heartbeat to report broken's load error",
    )
    after = scrape(stack)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("daikon_jobs", status="succeeded") == 3
    assert grew("daikon_jobs", status="failed") == 1
    assert grew("daikon_jobs", status="queued") == 1  # the job for `other`
    assert sample(after, "daikon_jobs", status="running") == 0
    # Every job records its queue and total time; a failed load records no later stage.
    counts = {
        stage: grew("daikon_stage_seconds_count", stage=stage) for stage in stage_metrics.STAGES
    }
    assert counts == {"queue": 4, "load": 3, "inference": 3, "ranking": 3, "upload": 3, "total": 4}
    assert grew("daikon_stage_seconds_sum", stage="inference") > 0
    assert grew("daikon_stage_seconds_bucket", stage="total", le="+Inf") == 4
    # The unserved model's job waits in the broker, at Celery level 9 - 8 = 1.
    assert sample(after, "daikon_queue_depth", model="other", priority="8") == 1
    other_depth = sum(
        sample(after, "daikon_queue_depth", model="other", priority=str(p)) for p in range(10)
    )
    assert other_depth == models(stack)["other"]["queued"]
    assert all(
        sample(after, "daikon_queue_depth", model="default", priority=str(p)) == 0
        for p in range(10)
    )
    assert stack.get(waiting["id"])["status"] == "queued"
    workers_by_model = {
        m: sample(after, "daikon_workers", model=m) for m in ("default", "other", "broken")
    }
    # A worker that failed to load a model no longer counts as serving it.
    assert workers_by_model == {"default": 1, "other": 0, "broken": 0}


def test_a_stopped_worker_is_gone_at_once(stack: Stack) -> None:
    """Last in this module: it stops the module's worker."""
    stack.worker.stop()
    assert stack.worker.proc.returncode == 0, stack.worker.log_tail()
    r = requests.get(stack.url("/readyz"), timeout=10)
    assert r.status_code == 503
    assert r.json()["error"]["message"] == "not ready; failing checks: workers"
    assert models(stack)["default"]["workers"] == 0
