"""The Python client against a real stack (API over HTTP, a Celery worker on the tiny models, a
webhook worker): the models it returns, the event stream resuming after the connection is cut
(a real TCP proxy in between), a submit retried after its answer was lost, pagination, errors
and webhooks verified with the helper."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from werkzeug.serving import make_server

from api.access_log import DevRequestHandler
from daikon.client import (
    AsyncDaikon,
    AuthenticationError,
    ConflictError,
    Daikon,
    DoneEvent,
    InvalidRequestError,
    JobEvent,
    NotFoundError,
    ProgressEvent,
    RateLimitError,
    RetryPolicy,
    StatusEvent,
    WaitTimeout,
    WebhookVerificationError,
    verify_webhook,
)
from daikon.client.models import Job, JobStatus, WebhookPayload
from server.webhooks.signing import new_secret
from tests.proxy import proxy_to
from tests.receiver import receiver
from tests.stack import (
    ADMIN_KEY,
    Stack,
    free_port,
    webhook_stack,
)

pytestmark = pytest.mark.e2e
QUICK = {"steps": 3, "candidates": 2, "top_k": 1}
LONG = {"steps": 150, "candidates": 4, "top_k": 1}  # several seconds on the tiny model
STREAMED = {"steps": 60, "candidates": 2, "top_k": 1}  # progress for a few seconds


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("client")
    with webhook_stack(tmp, redis_url, tiny_models, threads=2) as (s, _hooks):
        yield s


@pytest.fixture
def daikon(stack: Stack) -> Iterator[Daikon]:
    with Daikon(stack.base_url, ADMIN_KEY) as d:
        yield d


def test_submit_wait_and_download_give_the_apis_models_and_the_stored_bytes(
    stack: Stack, daikon: Daikon
) -> None:
    job = daikon.submit("a red circle above a blue square", seed=7, **QUICK)
    assert isinstance(job, Job) and job.status is JobStatus.queued
    assert job.params.seed == 7 and job.params.candidates == 2

    done = daikon.wait(job.id)
    assert done.status is JobStatus.succeeded and len(done.images) == 1
    assert done.model_dump(mode="json") == stack.get(job.id)  # the same object the API sends
    image = done.images[0]
    stored = (stack.settings.local_storage_path / job.id / "rank-1.png").read_bytes()
    assert daikon.download(image) == stored
    assert daikon.wait(job.id, poll=True) == done  # polling (ETag, Retry-After) agrees

    saved = daikon.save_images(done, stack.settings.data_path / "saved")
    assert [p.name for p in saved] == [f"{job.id}-rank1-clip{image.clip_score:.2f}.png"]
    assert saved[0].read_bytes() == stored


def test_an_inpaint_job_uploads_its_image_and_mask_and_keeps_the_unmasked_pixels(
    stack: Stack, daikon: Daikon, tmp_path: Path
) -> None:
    first = daikon.wait(daikon.submit("a red circle above a blue square", seed=3, **QUICK).id)
    original = Image.open(io.BytesIO(daikon.download(first.images[0]))).convert("RGB")
    mask = Image.new("L", original.size, 0)
    mask.paste(255, (0, original.height // 2, original.width, original.height))
    mask_path = tmp_path / "mask.png"
    mask.save(mask_path)
    buf = io.BytesIO()
    original.save(buf, format="PNG")
    key = f"edit-{uuid.uuid4()}"
    job = daikon.submit(
        "a yellow triangle",
        mode="inpaint",
        seed=5,
        idempotency_key=key,
        image=buf.getvalue(),
        mask=mask_path,
        **QUICK,
    )
    again = daikon.submit(
        "a yellow triangle",
        mode="inpaint",
        seed=5,
        idempotency_key=key,
        image=buf.getvalue(),
        mask=mask_path,
        **QUICK,
    )
    assert again.id == job.id  # the same files and key: the same job
    assert job.params.mode == "inpaint" and {i.role for i in job.inputs} == {"image", "mask"}
    done = daikon.wait(job.id)
    assert done.status is JobStatus.succeeded
    result = np.asarray(Image.open(io.BytesIO(daikon.download(done.images[0]))).convert("RGB"))
    top = original.height // 2
    assert np.array_equal(result[:top], np.asarray(original)[:top])  # black: kept as it was
    # The earlier image by its id, with an open file as the mask: image-to-image needs none.
    with mask_path.open("rb") as f:
        by_id = daikon.submit(
            "a yellow triangle", mode="inpaint", image_id=first.images[0].id, mask=f, **QUICK
        )
    assert daikon.wait(by_id.id).status is JobStatus.succeeded
    redrawn = daikon.submit(
        "a green circle", mode="image", strength=0.5, image_id=first.images[0].id, **QUICK
    )
    assert daikon.wait(redrawn.id).status is JobStatus.succeeded


def test_list_iterates_every_page_newest_first(daikon: Daikon) -> None:
    tag = uuid.uuid4().hex[:8]
    ids = [daikon.submit(f"page {tag} {i}", **QUICK).id for i in range(5)]
    listed = [j.id for j in daikon.list(page_size=2)]
    mine = [i for i in listed if i in ids]
    assert mine == list(reversed(ids))  # each once, newest first, across three pages
    for job_id in ids:
        daikon.wait(job_id)
    succeeded = daikon.list(status="succeeded", page_size=2)
    assert set(ids) <= {j.id for j in succeeded}


def test_events_resume_after_the_connection_is_cut_and_end_with_one_done(
    stack: Stack,
) -> None:
    with proxy_to(stack.base_url) as proxy, Daikon(proxy.url, ADMIN_KEY) as daikon:
        job = daikon.submit("a long one", **STREAMED)
        got: list[JobEvent] = []
        cut_after: int | None = None
        for event in daikon.events(job.id):
            got.append(event)
            if cut_after is None and isinstance(event, ProgressEvent) and event.data.step >= 3:
                cut_after = event.event_id
                assert proxy.sever() >= 1  # the stream's connection, mid-job
        streams = proxy.heads(f"GET /v1/jobs/{job.id}/events".encode())

    assert cut_after is not None, "no progress before the job ended"
    assert len(streams) >= 2, "the client never reconnected"
    resumed = re.search(rb"(?i)last-event-id: (\d+)", streams[1])
    assert resumed is not None and int(resumed.group(1)) == cut_after
    ids = [e.event_id for e in got]
    assert ids == sorted(set(ids))  # nothing twice, in order
    assert isinstance(got[0], StatusEvent)
    done = [e for e in got if isinstance(e, DoneEvent)]
    assert len(done) == 1 and got[-1] is done[0]
    assert done[0].job.status is JobStatus.succeeded
    steps = [e.data.step for e in got if isinstance(e, ProgressEvent)]
    assert steps == sorted(steps) and steps[-1] > 3  # progress went on after the cut


def test_the_async_client_resumes_a_cut_stream_too(stack: Stack) -> None:
    async def run(url: str, sever: object) -> tuple[list[JobEvent], Job]:
        async with AsyncDaikon(url, ADMIN_KEY) as daikon:
            job = await daikon.submit("a long async one", **STREAMED)
            got: list[JobEvent] = []
            cut = False
            async for event in daikon.events(job.id):
                got.append(event)
                if not cut and isinstance(event, ProgressEvent):
                    cut = True
                    assert sever() >= 1  # type: ignore[operator]
            return got, await daikon.wait(job.id)

    with proxy_to(stack.base_url) as proxy:
        got, waited = asyncio.run(run(proxy.url, proxy.sever))
        assert len(proxy.heads(b"GET /v1/jobs/")) >= 3  # two streams and the wait's
    ids = [e.event_id for e in got]
    assert ids == sorted(set(ids))
    assert [type(e) for e in got].count(DoneEvent) == 1 and isinstance(got[-1], DoneEvent)
    assert got[-1].job == waited and waited.status is JobStatus.succeeded


def test_a_submit_retried_after_its_answer_was_lost_makes_one_job(stack: Stack) -> None:
    prompt = f"lost answer {uuid.uuid4().hex[:8]}"
    with proxy_to(stack.base_url) as proxy, Daikon(proxy.url, ADMIN_KEY) as daikon:
        proxy.drop_response_to(b"POST /v1/jobs ")
        job = daikon.submit(prompt, **QUICK)
        posts = proxy.heads(b"POST /v1/jobs ")
    keys = [re.search(rb"(?i)idempotency-key: (\S+)", p) for p in posts]
    assert len(posts) == 2 and keys[0] and keys[1]
    assert keys[0].group(1) == keys[1].group(1)  # the retry reused the generated key
    r = stack.http.get(stack.url("/v1/jobs"), params={"limit": 100}, timeout=10)
    same = [j["id"] for j in r.json()["jobs"] if j["params"]["prompt"] == prompt]
    assert same == [job.id]


@pytest.fixture
def one_active_job(make_app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """An API (no worker: jobs stay queued) that lets each tenant one active job; its URL."""
    app = make_app(tenant_max_active_jobs=1)
    server = make_server(
        "127.0.0.1", free_port(), app, threaded=True, request_handler=DevRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_a_429_is_retried_after_its_retry_after_and_then_succeeds(one_active_job: str) -> None:
    with proxy_to(one_active_job) as proxy, Daikon(proxy.url, ADMIN_KEY) as daikon:
        blocker = daikon.submit("holds the only slot")
        impatient = Daikon(proxy.url, ADMIN_KEY, retry=RetryPolicy(max_retries=0))
        with impatient, pytest.raises(RateLimitError) as refused:
            impatient.submit("no retries")
        assert refused.value.code == "too_many_active_jobs" and refused.value.retry_after == 5

        def free_the_slot() -> None:  # once the next submit has been refused
            deadline = time.monotonic() + 60
            while proxy.answered(b"HTTP/1.1 429") < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            daikon.cancel(blocker.id)

        before = len(proxy.heads(b"POST /v1/jobs "))
        helper = threading.Thread(target=free_the_slot)
        helper.start()
        job = daikon.submit("waits for the slot")
        helper.join(10)
        posts = proxy.times(b"POST /v1/jobs ")[before:]
    assert job.status is JobStatus.queued
    assert len(posts) == 2 and posts[1] - posts[0] >= 5  # it waited the Retry-After


def test_polling_sends_the_etag_and_keeps_the_servers_pace(one_active_job: str) -> None:
    """No worker here: the job stays queued, so every poll after the first is a 304."""
    with proxy_to(one_active_job) as proxy, Daikon(proxy.url, ADMIN_KEY) as daikon:
        job = daikon.submit("stays queued")
        with pytest.raises(WaitTimeout):
            daikon.wait(job.id, poll=True, timeout=7)
        polls = proxy.heads(f"GET /v1/jobs/{job.id} ".encode())
        times = proxy.times(f"GET /v1/jobs/{job.id} ".encode())
        unchanged = proxy.answered(b"HTTP/1.1 304")
    assert len(polls) >= 2 and unchanged == len(polls) - 1
    assert all(re.search(rb"(?i)if-none-match: ", p) for p in polls[1:])
    assert all(b - a >= 2 for a, b in itertools.pairwise(times))  # queued: Retry-After 2


def test_errors_carry_the_apis_code_and_message(stack: Stack, daikon: Daikon) -> None:
    with pytest.raises(InvalidRequestError) as bad:
        daikon.submit("too many kept", candidates=2, top_k=5)
    raw = stack.http.post(
        stack.url("/v1/jobs"),
        timeout=10,
        json={"prompt": "too many kept", "candidates": 2, "top_k": 5},
    ).json()
    assert (bad.value.code, bad.value.message, bad.value.param) == (
        raw["error"]["code"],
        raw["error"]["message"],
        raw["error"]["param"],
    )
    assert bad.value.status == 422 and bad.value.param == "top_k"

    with pytest.raises(NotFoundError) as missing:
        daikon.get("no-such-job")
    assert missing.value.code == "not_found"
    with Daikon(stack.base_url, "dk_wrong") as stranger, pytest.raises(AuthenticationError) as e:
        stranger.get("x")
    assert e.value.code == "invalid_api_key" and e.value.status == 401

    finished = daikon.wait(daikon.submit("done already", **QUICK).id)
    with pytest.raises(ConflictError) as conflict:
        daikon.cancel(finished.id)
    assert conflict.value.code == "job_finished"


def test_cancel_and_admin_calls(stack: Stack, daikon: Daikon) -> None:
    job = daikon.submit("to cancel", **LONG)
    canceled = daikon.cancel(job.id)
    assert canceled.status is JobStatus.canceled
    assert daikon.cancel(job.id).status is JobStatus.canceled  # again: a no-op
    assert daikon.wait(job.id).status is JobStatus.canceled

    tenant = daikon.create_tenant(f"client-{uuid.uuid4().hex[:6]}")
    assert tenant.id in {t.id for t in daikon.tenants().tenants}
    new = daikon.create_key(tenant.id, name="web")
    with Daikon(stack.base_url, new.key) as theirs:
        assert [j.id for j in theirs.list()] == []  # a tenant sees only its own jobs
        mine = theirs.submit("theirs", **QUICK)
        assert theirs.get(mine.id).id == mine.id
        with pytest.raises(NotFoundError):
            daikon.get(mine.id)  # another tenant's job is not found
        assert [k.id for k in daikon.keys(tenant.id).keys] == [new.id]
        assert daikon.revoke_key(new.id).revoked_at is not None
        with pytest.raises(AuthenticationError):
            theirs.get(mine.id)
    assert daikon.models().models[0].name == "default"


def test_a_real_webhook_verifies_with_the_helper_and_a_forged_one_is_refused(
    daikon: Daikon,
) -> None:
    secret = daikon.rotate_webhook_secret().secret
    with receiver() as r:
        job = daikon.submit(
            "a hooked one", webhook_url=r.url(), webhook_events=["job.succeeded"], **QUICK
        )
        got = r.wait_for(1, timeout=90)[0]
    done = daikon.wait(job.id)

    event = verify_webhook(got.headers, got.body, secret)
    assert isinstance(event, WebhookPayload) and event.type == "job.succeeded"
    assert event.data.id == job.id and event.data.status is JobStatus.succeeded
    assert [i.clip_score for i in event.data.images] == [i.clip_score for i in done.images]
    delivery = daikon.deliveries(job.id).deliveries[0]
    assert delivery.id == got.headers["webhook-id"] and delivery.status == "delivered"

    forged = json.loads(got.body)
    forged["data"]["status"] = "failed"
    for headers, body, key in [
        (got.headers, json.dumps(forged).encode(), secret),  # a changed body
        (got.headers, got.body, new_secret()),  # signed with another secret
        ({**got.headers, "webhook-timestamp": "1000000000"}, got.body, secret),  # replayed
        ({k: v for k, v in got.headers.items() if k != "webhook-signature"}, got.body, secret),
    ]:
        with pytest.raises(WebhookVerificationError):
            verify_webhook(headers, body, key)


def test_configuration_comes_from_the_environment(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DAIKON_URL", stack.base_url)
    monkeypatch.setenv("DAIKON_API_KEY", ADMIN_KEY)
    with Daikon() as daikon:
        assert daikon.base_url == stack.base_url
        assert daikon.models().models
