"""End to end over HTTP: real Celery worker processes on real Redis, PostgreSQL + S3 (moto's
server) and SQLite + local storage, with the tiny models. No eager mode, no mocks."""

from __future__ import annotations

import io
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from PIL import Image

from tests.stack import Stack, running_stack, settings_for

pytestmark = pytest.mark.e2e
FAST = {"steps": 3, "candidates": 4, "top_k": 2}


@pytest.fixture(scope="module")
def pg_s3(tmp_path_factory, redis_url, postgres_url, s3_endpoint, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("pg_s3")
    settings = settings_for(
        tmp,
        redis_url,
        tiny_models,
        database_url=postgres_url,
        s3_bucket=f"daikon-{uuid.uuid4().hex[:8]}",
        s3_endpoint_url=s3_endpoint,
    )
    with running_stack(settings, tmp) as stack:
        yield stack
    redis.Redis.from_url(redis_url).delete(settings.services.queue)


@pytest.fixture(scope="module")
def sqlite_local(tmp_path_factory, redis_url, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("sqlite_local")
    with running_stack(settings_for(tmp, redis_url, tiny_models), tmp) as stack:
        yield stack
    redis.Redis.from_url(redis_url).delete(stack.settings.services.queue)


def fetch_png(url: str) -> tuple[bytes, Image.Image]:
    r = requests.get(url, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/png"
    return r.content, Image.open(io.BytesIO(r.content))


def test_prompt_in_ranked_pngs_out_on_postgres_and_s3(pg_s3: Stack) -> None:
    submitted = pg_s3.submit(
        prompt="a red circle above a blue square", width=96, height=64, seed=1000, **FAST
    )
    job = pg_s3.wait(submitted["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["error"] is None and job["params"]["seed"] == 1000
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert [i["rank"] for i in job["images"]] == [1, 2]
    scores = [i["clip_score"] for i in job["images"]]
    assert scores[0] >= scores[1]
    assert len({i["seed"] for i in job["images"]}) == 2
    assert {i["seed"] for i in job["images"]} <= {1000, 1001, 1002, 1003}
    for image in job["images"]:
        assert image["url"].startswith(
            pg_s3.settings.storage.s3_endpoint_url or "?"
        )  # presigned S3
        data, png = fetch_png(image["url"])
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and png.format == "PNG"
        assert png.size == (96, 64) == (image["width"], image["height"])
    for key in ("queue_seconds", "inference_seconds", "ranking_seconds", "upload_seconds"):
        assert job["metrics"][key] >= 0.0


def test_the_same_seed_reproduces_the_same_pixels(pg_s3: Stack) -> None:
    ids = [pg_s3.submit(prompt="a green triangle", seed=s, **FAST)["id"] for s in (77, 77, 900)]
    a, b, c = (pg_s3.wait(i) for i in ids)  # 900..903 share no candidate with 77..80
    best = [fetch_png(job["images"][0]["url"])[0] for job in (a, b, c)]
    assert best[0] == best[1]
    assert best[0] != best[2]
    assert b["reused_from"] is None  # repeats run unless the deployment reuses them (off)
    assert [i["clip_score"] for i in a["images"]] == [i["clip_score"] for i in b["images"]]


def unsigned(job: dict[str, Any]) -> dict[str, Any]:
    """The job with its image URLs cut at the query: presigned S3 URLs carry the signing time
    (X-Amz-Date), so two reads a second apart differ only there."""
    return {**job, "images": [{**i, "url": i["url"].split("?")[0]} for i in job["images"]]}


def test_a_redelivered_message_for_a_finished_job_does_nothing(pg_s3: Stack) -> None:
    done = pg_s3.wait(pg_s3.submit(prompt="a yellow square", seed=5, **FAST)["id"])
    celery = pg_s3.app.extensions["daikon"].celery
    celery.send_task(
        "daikon.generate_job", args=[done["id"]], queue=pg_s3.settings.queue_for("default")
    )
    # The queue is FIFO and the worker runs one job at a time: once a later job is done,
    # the duplicate has been handled.
    pg_s3.wait(pg_s3.submit(prompt="a later job", **FAST)["id"])

    again = pg_s3.get(done["id"])
    assert unsigned(again) == unsigned(done)
    assert "not claimable" in pg_s3.worker.log_tail(200)


def test_sqlite_and_local_storage_serve_images_through_the_api(sqlite_local: Stack) -> None:
    ids = [sqlite_local.submit(prompt=f"a blue circle {n}", seed=n, **FAST)["id"] for n in (1, 2)]
    jobs = [sqlite_local.wait(i) for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]
    url = jobs[0]["images"][0]["url"]
    assert url.startswith(f"{sqlite_local.base_url}/v1/jobs/{ids[0]}/images/1?expires=")
    data, png = fetch_png(url)
    # The default size: the model's own (it published its capabilities when it loaded).
    (model,) = sqlite_local.http.get(sqlite_local.url("/v1/models"), timeout=10).json()["models"]
    own = model["capabilities"]["defaults"]
    assert (
        png.size
        == (own["width"], own["height"])
        == (jobs[0]["params"]["width"], jobs[0]["params"]["height"])
    )
    stored = sqlite_local.settings.local_storage_path / ids[0] / "rank-1.png"
    assert stored.read_bytes() == data
    listed = sqlite_local.http.get(sqlite_local.url("/v1/jobs?limit=2"), timeout=10).json()["jobs"]
    assert [j["id"] for j in listed] == ids[::-1]


def test_a_failing_pipeline_ends_failed_with_its_reason(  # type: ignore[no-untyped-def]
    tmp_path, redis_url, sqlite_url, tiny_models
) -> None:
    broken = tmp_path / "broken-sd"
    shutil.copytree(tiny_models[0], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    settings = settings_for(tmp_path, redis_url, (broken, tiny_models[1]), database_url=sqlite_url)
    with running_stack(settings, tmp_path) as stack:
        job = stack.wait(stack.submit(prompt="a red circle", **FAST)["id"])
        # The worker does not advertise the model it cannot load; an admin sees why.
        deadline = time.monotonic() + 60
        while True:
            (model,) = stack.http.get(stack.url("/v1/models"), timeout=10).json()["models"]
            if (model["load_errors"] and model["workers"] == 0) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert model["workers"] == 0
        (why,) = model["load_errors"].values()
        assert f"cannot load pipeline {str(broken)!r}" in why
    redis.Redis.from_url(redis_url).delete(settings.services.queue)
    assert job["status"] == "failed" and job["images"] == []
    assert job["error"]["code"] == "model_load_failed"
    assert f"cannot load pipeline {str(broken)!r}" in job["error"]["message"]
    assert job["finished_at"] is not None
