"""`POST /v1/images/generations` driven by the official `openai` client, as a user would: a real
worker process and API over HTTP (SQLite + local store, tiny models), and API-only servers
with no worker where a job must stay unfinished."""

from __future__ import annotations

import base64
import functools
import io
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import requests
from flask import Flask
from PIL import Image
from sqlalchemy import func, select
from werkzeug.serving import make_server

from api import create_app, openai_compat
from api.access_log import DevRequestHandler
from db import jobs
from db.models import Job
from db.session import session_scope
from server.live import LiveState
from server.settings import Limits, Settings
from tests.stack import Stack, free_port, migrate, running_stack, settings_for

pytestmark = pytest.mark.e2e
ADMIN_KEY = "dk_test_openai_admin"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
MAX_CANDIDATES = Limits.model_fields["max_candidates"].default  # the deployment default


def drop_queues(redis_url: str, queue: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{queue}*"):
        client.delete(key)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("openai")
    settings = settings_for(tmp, redis_url, tiny_models, admin_key=ADMIN_KEY, default_steps=3)
    with running_stack(settings, tmp) as running:
        yield running
    drop_queues(redis_url, settings.services.queue)


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=ADMIN_KEY)


def decode_png(b64: str | None) -> tuple[bytes, Image.Image]:
    assert b64 is not None
    data = base64.b64decode(b64, validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return data, Image.open(io.BytesIO(data))


def fetch(url: str) -> bytes:
    r = requests.get(url, timeout=10)  # no API key: the URL itself is the credential
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/png"
    return r.content


def job_id_of(location: str) -> str:
    assert location.startswith("/v1/jobs/"), location
    return location.removeprefix("/v1/jobs/")


# --- a real worker -------------------------------------------------------------------------


def test_b64_json_answers_n_ranked_pngs_of_the_requested_size(
    stack: Stack, client: openai.OpenAI
) -> None:
    before = int(time.time())
    raw = client.images.with_raw_response.generate(
        prompt="a red circle above a blue square",
        n=2,
        size="96x64",
        response_format="b64_json",
        quality="hd",
        style="vivid",
        user="user-42",
    )
    resp = raw.parse()
    assert before <= resp.created <= time.time()
    assert resp.data is not None and len(resp.data) == 2
    pngs = [decode_png(image.b64_json) for image in resp.data]
    assert [png.size for _, png in pngs] == [(96, 64), (96, 64)]
    assert all(image.url is None for image in resp.data)

    job = stack.get(job_id_of(raw.headers["Location"]))
    assert job["status"] == "succeeded"
    params = job["params"]
    assert (params["top_k"], params["candidates"]) == (2, stack.settings.limits.default_candidates)
    assert (params["width"], params["height"]) == (96, 64)
    assert job["metadata"] == {"openai_user": "user-42"}
    # Rank order: the b64 images are the job's rank 1 and rank 2, in that order.
    assert [fetch(image["url"]) for image in job["images"]] == [data for data, _ in pngs]

    listed = stack.http.get(stack.url("/v1/jobs?limit=100"), timeout=10).json()["jobs"]
    assert [j["params"]["top_k"] for j in listed if j["id"] == job["id"]] == [2]


def test_url_is_the_default_format_and_its_urls_are_fetchable(
    stack: Stack, client: openai.OpenAI
) -> None:
    resp = client.images.generate(prompt="a green triangle", size="64x64")
    assert resp.data is not None and len(resp.data) == 1  # n defaults to 1
    assert resp.data[0].b64_json is None and resp.data[0].url is not None
    png = Image.open(io.BytesIO(fetch(resp.data[0].url)))
    assert png.format == "PNG" and png.size == (64, 64)

    explicit = client.images.generate(prompt="a green triangle", n=3, response_format="url")
    assert explicit.data is not None
    urls = [image.url or "" for image in explicit.data]
    assert len(set(urls)) == 3
    assert all(fetch(url) for url in urls)


def test_an_idempotency_key_replays_the_same_job(stack: Stack, client: openai.OpenAI) -> None:
    key = {"Idempotency-Key": f"openai-{uuid.uuid4()}"}
    first = client.images.with_raw_response.generate(
        prompt="a yellow square", response_format="b64_json", extra_headers=key
    )
    again = client.images.with_raw_response.generate(
        prompt="a yellow square", response_format="b64_json", extra_headers=key
    )
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert again.parse().model_dump() == first.parse().model_dump()


def test_an_unknown_model_is_refused_naming_the_available_ones(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt="a red circle", model="dall-e-3")
    assert refused.value.param == "model"
    assert "unknown model 'dall-e-3'; available: default" in refused.value.message


# --- an API with no worker: jobs stay queued until the test moves them --------------------


@dataclass
class IdleApi:
    """The real API over HTTP on a queue no worker consumes."""

    app: Flask
    base_url: str
    settings: Settings

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=ADMIN_KEY, **kw)

    def job_count(self) -> int:
        with session_scope(self.app.extensions["daikon"].sessions) as s:
            return int(s.scalar(select(func.count()).select_from(Job)) or 0)

    def queued_messages(self) -> int:
        r = redis.Redis.from_url(self.settings.services.redis_url)
        return sum(int(r.llen(key)) for key in r.scan_iter(f"{self.settings.services.queue}*"))

    def wait_for_job(self, number: int = 1) -> Job:
        """The `number`th job, once a request in flight has created it."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with session_scope(self.app.extensions["daikon"].sessions) as s:
                found = list(s.scalars(select(Job).order_by(Job.created_at)))
                if len(found) >= number:
                    s.expunge_all()
                    return found[number - 1]
            time.sleep(0.05)
        raise AssertionError(f"job {number} was not created")

    def cancel(self, job_id: str) -> None:
        r = requests.post(self.base_url + f"/v1/jobs/{job_id}/cancel", headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text


@contextmanager
def serve_idle(data_dir: Path, redis_url: str, **overrides: Any) -> Iterator[IdleApi]:
    settings = Settings(
        data_dir=data_dir,
        redis_url=redis_url,
        admin_key=ADMIN_KEY,
        queue=f"daikon-openai-idle-{uuid.uuid4().hex[:8]}",
        **overrides,
    )
    migrate(settings.sqlalchemy_url)
    app = create_app(settings)
    server = make_server(
        "127.0.0.1", free_port(), app, threaded=True, request_handler=DevRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield IdleApi(app, f"http://127.0.0.1:{server.server_port}", settings)
    finally:
        server.shutdown()
        drop_queues(redis_url, settings.services.queue)


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[IdleApi]:
    """Shared by tests that only count what they add; waits 0.3 s for a job."""
    with serve_idle(tmp_path_factory.mktemp("idle"), redis_url, openai_wait_seconds=0.3) as api:
        yield api


@pytest.fixture
def idle_api(tmp_path: Path, redis_url: str) -> Callable[..., Any]:
    """A fresh idle API with the given settings, for tests that need their own."""
    return functools.partial(serve_idle, tmp_path, redis_url)


BAD_REQUESTS = [
    pytest.param({"size": "100x100"}, "size", id="size-not-multiple-of-8"),
    pytest.param({"size": "2048x64"}, "size", id="size-above-max"),
    pytest.param({"size": "1024"}, "size", id="size-malformed"),
    pytest.param({"n": 0}, "n", id="n-zero"),
    pytest.param({"n": MAX_CANDIDATES + 1}, "n", id="n-above-max-candidates"),
    pytest.param({"response_format": "png"}, "response_format", id="response-format"),
    pytest.param({"model": "dall-e-3"}, "model", id="unknown-model"),
    pytest.param({"extra_body": {"background": "transparent"}}, "background", id="unknown-field"),
    pytest.param({"prompt": " "}, "prompt", id="blank-prompt"),
    pytest.param({"user": "u" * 20_000}, "user", id="user-too-big-for-metadata"),
]


@pytest.mark.parametrize(("kwargs", "param"), BAD_REQUESTS)
def test_a_bad_request_names_its_param_and_creates_nothing(
    idle: IdleApi, kwargs: dict[str, Any], param: str
) -> None:
    before = (idle.job_count(), idle.queued_messages())
    with pytest.raises(openai.BadRequestError) as refused:
        idle.client().images.generate(**{"prompt": "a red circle", **kwargs})
    assert refused.value.status_code == 400
    assert refused.value.type == "invalid_request_error"
    assert refused.value.param == param
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["message"].startswith(f"{param}: ")  # "size: must be ..."
    assert (idle.job_count(), idle.queued_messages()) == before


def test_a_job_unfinished_at_the_deadline_answers_504_with_its_location(idle: IdleApi) -> None:
    before = idle.job_count()
    with pytest.raises(openai.InternalServerError) as late:
        idle.client().images.generate(prompt="a red circle")  # retries allowed (default 2)
    job_id = job_id_of(late.value.response.headers["Location"])
    assert late.value.status_code == 504 and late.value.code == "job_not_finished"
    assert job_id in late.value.message
    # Not retried: without an Idempotency-Key a retry would have made a second job.
    assert idle.job_count() == before + 1
    polled = requests.get(idle.base_url + f"/v1/jobs/{job_id}", headers=AUTH, timeout=10)
    assert polled.json()["status"] == "queued"


def test_with_an_idempotency_key_the_client_retries_into_the_same_job(idle: IdleApi) -> None:
    calls: list[str] = []
    http = openai.DefaultHttpxClient(
        event_hooks={"response": [lambda r: calls.append(r.headers.get("Location", ""))]}
    )
    before = idle.job_count()
    key = {"Idempotency-Key": f"openai-{uuid.uuid4()}"}
    with pytest.raises(openai.InternalServerError) as late:
        idle.client(max_retries=2, http_client=http).images.generate(
            prompt="a red circle", extra_headers=key
        )
    assert late.value.status_code == 504
    assert len(calls) == 3 and len(set(calls)) == 1  # three waits, one job
    assert idle.job_count() == before + 1


class InThread:
    """A call running in a thread (the test moves the job meanwhile), and what it raised."""

    def __init__(self, call: Callable[[], Any]):
        self.raised: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except BaseException as e:
            self.raised = e

    def error(self, timeout: float = 10) -> BaseException | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the request did not end"
        return self.raised


def test_a_failed_job_answers_its_error_as_soon_as_it_is_announced(
    idle_api: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the pub/sub notice can end the wait within the test: no periodic re-read.
    monkeypatch.setattr(openai_compat, "RECHECK_SECONDS", 60.0)
    with idle_api(openai_wait_seconds=30) as api:
        call = InThread(lambda: api.client().images.generate(prompt="a red circle"))
        job = api.wait_for_job()
        with session_scope(api.app.extensions["daikon"].sessions) as s:
            assert jobs.claim(session=s, job_id=job.id, worker="test") is not None
            assert jobs.fail(
                session=s,
                job_id=job.id,
                code="generation_failed",
                message="CUDA out of memory",
                metrics={},
            )
        announced = time.monotonic()
        LiveState(api.settings.services.redis_url).announce(job.id)
        failed = call.error()
        assert time.monotonic() - announced < 5
        assert isinstance(failed, openai.InternalServerError)
        assert failed.status_code == 500 and failed.code == "generation_failed"
        assert f"job {job.id} failed: CUDA out of memory" in failed.message
        assert failed.response.headers["x-should-retry"] == "false"
        assert api.job_count() == 1


def test_a_job_canceled_while_waiting_answers_409(idle_api: Callable[..., Any]) -> None:
    with idle_api(openai_wait_seconds=30) as api:
        call = InThread(lambda: api.client().images.generate(prompt="a red circle"))
        job = api.wait_for_job()
        api.cancel(job.id)
        canceled = call.error()
        assert isinstance(canceled, openai.ConflictError)
        assert canceled.code == "job_canceled" and job.id in canceled.message
        assert api.job_count() == 1


def test_waiting_requests_are_capped_and_a_refusal_creates_no_job(
    idle_api: Callable[..., Any],
) -> None:
    with idle_api(openai_wait_seconds=30, max_long_requests=1) as api:
        call = InThread(lambda: api.client().images.generate(prompt="a red circle"))
        job = api.wait_for_job()
        with pytest.raises(openai.InternalServerError) as busy:
            api.client(max_retries=0).images.generate(prompt="a blue square")
        assert busy.value.status_code == 503 and busy.value.code == "too_many_waiting"
        assert api.job_count() == 1
        api.cancel(job.id)
        assert isinstance(call.error(), openai.ConflictError)
        # The first request's slot was given back: the next one waits for its job again.
        again = InThread(lambda: api.client().images.generate(prompt="a third"))
        api.cancel(api.wait_for_job(2).id)
        assert isinstance(again.error(), openai.ConflictError)
