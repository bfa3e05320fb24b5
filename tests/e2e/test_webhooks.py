"""Webhooks end to end: a real generation worker, a real webhook worker (its own process and
queue), the real API over HTTP, and a receiver on loopback that verifies every delivery with
the official standardwebhooks library."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.receiver import Received, Reply, receiver
from tests.stack import Stack, WorkerProcess, webhook_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, tiny_models) -> Iterator[tuple[Stack, WorkerProcess]]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("webhooks")
    public = "http://daikon.test"
    with webhook_stack(tmp, redis_url, tiny_models, threads=4, public_url=public) as found:
        yield found


def kind(r: Received) -> str:
    return str(json.loads(r.body)["type"])


def without_queries(job: dict[str, Any]) -> dict[str, Any]:
    """Signed image URLs carry their expiry: compare where they point."""
    return {
        **job,
        "images": [
            {**i, "url": urlsplit(i["url"])._replace(query="").geturl()} for i in job["images"]
        ],
    }


def settled(api: Stack, job_id: str, received: list[Received]) -> list[dict[str, Any]]:
    """The job's deliveries once none is pending and every attempt has reached the receiver."""
    deadline = time.monotonic() + 30
    while True:
        listed = api.http.get(api.url(f"/v1/jobs/{job_id}/webhooks"), timeout=10).json()
        deliveries: list[dict[str, Any]] = listed["deliveries"]
        attempts = sum(d["attempt_count"] for d in deliveries)
        if all(d["status"] != "pending" for d in deliveries) and attempts == len(received):
            return deliveries
        assert time.monotonic() < deadline, (deliveries, len(received))
        time.sleep(0.1)


def test_a_job_sends_signed_started_progress_and_succeeded_and_retries_keep_the_id(
    stack: tuple[Stack, WorkerProcess],
) -> None:
    api, hooks = stack
    secret = api.http.post(api.url("/v1/webhooks/secret"), timeout=10).json()["secret"]

    def reply_for(got: Received, before: list[Received]) -> Reply:
        if kind(got) == "job.progress":
            return Reply(500)  # progress is fire-once: never retried
        if kind(got) == "job.succeeded" and not any(kind(b) == "job.succeeded" for b in before):
            return Reply(503)  # the first try fails; the broker brings it back in 5 s
        return Reply(200)

    with receiver(reply_for=reply_for) as r:
        job = api.submit(
            prompt="a red circle",
            steps=40,
            candidates=2,
            top_k=1,
            seed=3,
            webhook_url=r.url(),
            webhook_events=["job.started", "job.progress", "job.succeeded"],
        )
        r.wait_until(
            lambda g: sum(kind(x) == "job.succeeded" for x in g) == 2, 90, "a retried job.succeeded"
        )
        listed = settled(api, job["id"], r.received)
        got = list(r.received)
    done = api.get(job["id"])

    events = [(kind(x), x.verify(secret)) for x in got]  # every delivery verifies
    started = [p for k, p in events if k == "job.started"]
    progress = [p for k, p in events if k == "job.progress"]
    succeeded = [(x, p) for x, (k, p) in zip(got, events, strict=True) if k == "job.succeeded"]
    assert len(started) == 1 and started[0]["data"]["status"] == "running"
    assert started[0]["data"]["id"] == job["id"] and started[0]["data"]["progress"]["step"] == 0
    (first, payload), (retry, _) = succeeded
    assert first.id == retry.id and first.body == retry.body  # the receiver's idempotency key
    assert retry.at - first.at >= 5
    assert payload["data"]["status"] == "succeeded"
    assert without_queries(payload["data"]) == without_queries(done)
    assert done["images"][0]["url"].startswith("http://daikon.test/v1/jobs/")

    assert progress, "no job.progress event"
    steps = [p["data"]["progress"]["step"] for p in progress]
    assert steps == sorted(steps) and all(p["data"]["status"] == "running" for p in progress)
    times = sorted(datetime.fromisoformat(p["timestamp"]) for p in progress)
    assert all((b - a).total_seconds() >= 0.5 for a, b in itertools.pairwise(times))
    ids = [x.id for x in got if kind(x) != "job.succeeded"] + [first.id]
    assert len(set(ids)) == len(ids)  # one webhook-id per event

    by_event: dict[str, list[dict[str, Any]]] = {}
    for d in listed:
        by_event.setdefault(d["event"], []).append(d)
    assert [(d["status"], d["attempt_count"]) for d in by_event["job.succeeded"]] == [
        ("delivered", 2)
    ]
    assert [a["status_code"] for a in by_event["job.succeeded"][0]["attempts"]] == [503, 200]
    assert all((d["status"], d["attempt_count"]) == ("failed", 1) for d in by_event["job.progress"])
    assert len(by_event["job.progress"]) == len(progress)

    finished = datetime.fromisoformat(done["finished_at"]).timestamp()
    latency = first.at - finished
    print(f"\njob finished -> receiver: {latency * 1000:.0f} ms")
    assert 0 <= latency < 5, hooks.log_tail()
