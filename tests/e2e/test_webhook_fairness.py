"""One tenant's hanging receivers against another tenant's webhook, end to end: the real API
over HTTP, a real webhook worker process with make run's 8 delivery threads and the shipped
defaults (4 attempts in flight per tenant, 2 per endpoint, a 5 s first-byte timeout), 16
receivers on loopback that accept and never answer, and a receiver that answers."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.receiver import Received, Reply, hanging, receiver
from tests.stack import Stack, WorkerProcess, webhook_stack

pytestmark = pytest.mark.e2e
QUICK = {"prompt": "a red circle", "steps": 2, "candidates": 1, "top_k": 1}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, tiny_models) -> Iterator[tuple[Stack, WorkerProcess]]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("webhook-fairness")
    with webhook_stack(tmp, redis_url, tiny_models, threads=8) as found:
        yield found


def tenant(api: Stack, name: str) -> requests.Session:
    t = api.http.post(api.url("/v1/admin/tenants"), json={"name": name}, timeout=10).json()
    key = api.http.post(api.url(f"/v1/admin/tenants/{t['id']}/keys"), json={}, timeout=10).json()[
        "key"
    ]
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    return http


def canceled_event(api: Stack, http: requests.Session, url: str) -> str:
    """A job whose cancel raises one webhook event for url; the job's id."""
    body = {**QUICK, "webhook_url": url, "webhook_events": ["job.canceled"]}
    r = http.post(api.url("/v1/jobs"), json=body, timeout=10)
    assert r.status_code == 202, r.text
    job_id = str(r.json()["id"])
    assert http.post(api.url(f"/v1/jobs/{job_id}/cancel"), timeout=10).status_code == 200
    return job_id


def deliveries_of(api: Stack, http: requests.Session, job_id: str) -> list[dict[str, Any]]:
    r = http.get(api.url(f"/v1/jobs/{job_id}/webhooks"), timeout=10)
    return list(r.json()["deliveries"])


def test_sixteen_hanging_receivers_of_one_tenant_do_not_delay_another_tenants_webhook(
    stack: tuple[Stack, WorkerProcess],
) -> None:
    api, hooks = stack
    a, b = tenant(api, f"a-{uuid.uuid4().hex[:6]}"), tenant(api, f"b-{uuid.uuid4().hex[:6]}")
    secret = b.post(api.url("/v1/webhooks/secret"), timeout=10).json()["secret"]
    with hanging(16) as h:
        seen_by_a: list[int] = []  # A's connections so far, when each of B's webhooks came

        def reply_for(got: Received, before: list[Received]) -> Reply:
            seen_by_a.append(h.total_accepted())
            return Reply(204)

        with receiver(reply_for=reply_for) as r:
            # The worker is up once a first webhook arrives; then B's latency, alone.
            canceled_event(api, b, r.url())
            r.wait_for(1, 120)
            sent = time.time()
            quiet_job = canceled_event(api, b, r.url())
            quiet = r.wait_for(2, 60)[1].at - sent

            # The flood: two events for each of A's 16 hanging receivers, queued before B's.
            a_jobs = [canceled_event(api, a, h.url(i % 16)) for i in range(32)]
            sent = time.time()
            b_job = canceled_event(api, b, r.url())
            got = r.wait_for(3, 60)
            flooded = got[2].at - sent
            a_open_when_b_came = h.most_open
            listed = {j: deliveries_of(api, a, j) for j in a_jobs}

        # A had its share of the threads, never more: 4 attempts in flight at once.
        deadline = time.monotonic() + 60
        while h.total_accepted() < 4:
            assert time.monotonic() < deadline, hooks.log_tail()
            time.sleep(0.1)
        assert a_open_when_b_came <= 4 and h.most_open <= 4 and h.most_open_each <= 2
        # B's webhook came while A's first attempts hung, not after A's queue: in the old
        # first-come-first-served worker all 32 of A's attempts came first.
        assert seen_by_a[2] <= 12, (seen_by_a, hooks.log_tail())

    payloads = [m.verify(secret) for m in got]  # signed with B's secret
    assert [p["type"] for p in payloads] == ["job.canceled"] * 3
    assert [p["data"]["id"] for p in payloads[1:]] == [quiet_job, b_job]
    assert [d["status"] for d in deliveries_of(api, b, b_job)] == ["delivered"]

    # A's deliveries that waited spent no attempt: only connections made spend attempts.
    a_deliveries = [d for ds in listed.values() for d in ds]
    assert len(a_deliveries) == 32 and all(d["status"] == "pending" for d in a_deliveries)
    spent = sum(d["attempt_count"] for d in a_deliveries)
    assert spent <= h.total_accepted() + 4
    assert sum(d["attempt_count"] == 0 for d in a_deliveries) >= 32 - 12
    assert "has every delivery slot taken" in hooks.log_path.read_text()
    errors = {a["error"] for d in a_deliveries for a in d["attempts"]}
    assert errors <= {"no answer within 5 s"}, errors
    print(
        f"\ntenant B's webhook: {quiet * 1000:.0f} ms alone, {flooded * 1000:.0f} ms with "
        f"16 of tenant A's receivers hanging ({len(a_jobs)} events queued before it); A's "
        f"connections when B's came: {seen_by_a[2]}, at most {h.most_open} at once"
    )
    print(json.dumps({"b_alone_ms": round(quiet * 1000), "b_flooded_ms": round(flooded * 1000)}))
