"""Exact repeats against a real worker process (issue 24, item 6): with DAIKON_REUSE_REPEATS on,
a job identical to an earlier succeeded one of the same tenant is answered with copies of that
job's images, as a job of its own (its URLs, its events, its webhook), and counted in /metrics;
a different seed or another tenant runs. Reuse off (the default) runs every job:
tests/e2e/test_end_to_end.py's repeated seed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.e2e.test_priority import tenant_session
from tests.metrics import parse, sample, wait_until
from tests.stack import Stack, running_stack, settings_for

pytestmark = pytest.mark.e2e
FAST = {"steps": 2, "candidates": 2, "top_k": 2}
PATIENCE = 600.0  # seconds a job may take on a machine busy with other work (the first loads)
EVENTS = ["job.started", "job.succeeded"]
HOOK = {"webhook_url": "https://93.184.215.14/hook", "webhook_events": EVENTS}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, s3_endpoint, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """S3 (moto's server): the copies are objects of their own in the bucket. Its own SQLite
    file, not the shared PostgreSQL: the webhook it subscribes stays pending (nothing answers
    there), and the webhook tests' deliverers on PostgreSQL would meet its delivery, sealed
    with this stack's key. The executor's reuse tests run on PostgreSQL."""
    tmp = tmp_path_factory.mktemp("reuse")
    settings = settings_for(
        tmp,
        redis_url,
        tiny_models,
        s3_bucket=f"daikon-{uuid.uuid4().hex[:8]}",
        s3_endpoint_url=s3_endpoint,
        reuse_repeats=True,
    )
    with running_stack(settings, tmp) as s:
        yield s


def reused(stack: Stack) -> float:
    page = requests.get(stack.url("/metrics"), timeout=10)
    return sample(parse(page.text), "daikon_reused_jobs_total", model="default")


def pngs(job: dict[str, Any]) -> list[bytes]:
    out = []
    for image in job["images"]:
        r = requests.get(image["url"], timeout=10)
        assert r.status_code == 200, r.text
        out.append(r.content)
    return out


@pytest.mark.timeout(900)  # a stack, a model load and 3 jobs: minutes on a busy 2-core machine
def test_a_repeat_gets_copies_of_the_earlier_images_and_only_the_same_tenants(
    stack: Stack,
) -> None:
    body: dict[str, Any] = {
        "prompt": f"a red circle above a blue square {uuid.uuid4().hex}",
        "seed": 21,
        **FAST,
    }
    before = reused(stack)
    first = stack.wait(stack.submit(**body)["id"], timeout=PATIENCE)
    repeat = stack.wait(stack.submit(**body, **HOOK)["id"], timeout=PATIENCE)
    assert (first["status"], repeat["status"]) == ("succeeded", "succeeded"), repeat["error"]
    assert (first["reused_from"], repeat["reused_from"]) == (None, first["id"])
    assert pngs(repeat) == pngs(first) and len(repeat["images"]) == 2
    assert {i["url"] for i in repeat["images"]}.isdisjoint(i["url"] for i in first["images"])
    assert [i["id"] for i in repeat["images"]] == [f"{repeat['id']}:1", f"{repeat['id']}:2"]
    assert repeat["params"] == first["params"]
    assert reused(stack) == before + 1
    # Its own events: the webhook records a start and a success for it, as for a job that ran.
    hooks = stack.http.get(stack.url(f"/v1/jobs/{repeat['id']}/webhooks"), timeout=10)
    assert sorted(d["event"] for d in hooks.json()["deliveries"]) == EVENTS

    # Another seed, or the same body from another tenant, runs. Both queued at once: they may
    # share a pipeline call.
    theirs = tenant_session(stack, f"reuse-{uuid.uuid4().hex[:8]}")
    other_seed_id = stack.submit(**{**body, "seed": 22})["id"]
    r = theirs.post(stack.url("/v1/jobs"), json=body, timeout=10)
    assert r.status_code == 202, r.text
    other_seed = stack.wait(other_seed_id, timeout=PATIENCE)
    mine = stack.url(f"/v1/jobs/{r.json()['id']}")
    wait_until(
        lambda: theirs.get(mine, timeout=10).json()["status"] not in ("queued", "running"),
        PATIENCE,
        "the other tenant's job to end",
    )
    their_job = theirs.get(mine, timeout=10).json()
    assert (other_seed["status"], their_job["status"]) == ("succeeded", "succeeded")
    assert (other_seed["reused_from"], their_job["reused_from"]) == (None, None)
    assert their_job["params"] == first["params"] and len(pngs(their_job)) == 2
    assert pngs(other_seed) != pngs(first)
    assert reused(stack) == before + 1
