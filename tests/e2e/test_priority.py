"""The run order against a real worker process (issue 21, item 7): tenants take turns at one
priority, and after a pause and resume jobs start in priority order, then submission order,
exactly as their queue positions said."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from db import dashboard
from db.session import session_scope
from tests.stack import Stack, running_stack, settings_for

pytestmark = pytest.mark.e2e
QUICK = {"steps": 2, "candidates": 1, "top_k": 1}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("priority")
    # One job per pipeline call: each job's own start time shows the order.
    settings = settings_for(tmp, redis_url, tiny_models, batch_jobs=False)
    with running_stack(settings, tmp) as s:
        yield s


def tenant_session(stack: Stack, name: str, max_priority: int | None = None) -> requests.Session:
    tenant = stack.http.post(stack.url("/v1/admin/tenants"), json={"name": name}, timeout=10)
    assert tenant.status_code == 201, tenant.text
    tenant_id = tenant.json()["id"]
    key = stack.http.post(
        stack.url(f"/v1/admin/tenants/{tenant_id}/keys"), json={"name": "t"}, timeout=10
    )
    if max_priority is not None:
        r = stack.http.put(
            stack.url(f"/v1/admin/tenants/{tenant_id}/limits"),
            json={"max_priority": max_priority},
            timeout=10,
        )
        assert r.status_code == 200, r.text
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key.json()['key']}"
    return http


def submit(stack: Stack, http: requests.Session, prompt: str, **body: Any) -> str:
    r = http.post(stack.url("/v1/jobs"), json={"prompt": prompt, **QUICK, **body}, timeout=10)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def get(stack: Stack, http: requests.Session, job_id: str) -> dict[str, Any]:
    r = http.get(stack.url(f"/v1/jobs/{job_id}"), timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait(stack: Stack, http: requests.Session, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while (job := get(stack, http, job_id))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, stack.worker.log_tail(60)
        time.sleep(0.1)
    return job


def test_turns_and_priority_across_a_pause_start_jobs_where_their_positions_said(
    stack: Stack,
) -> None:
    """While the model's queue is paused, tenant A queues 8 jobs, then tenant B one, then A a
    priority-9 job that costs more (so the others' messages may not run it: it gets its own at
    the top). Every message comes back again and again while paused. After the resume the
    priority-9 job starts first, B's job before most of A's, and the start order is exactly
    the order of the positions the API showed."""
    a = tenant_session(stack, "prio-a", max_priority=9)
    b = tenant_session(stack, "prio-b")
    sessions = stack.app.extensions["daikon"].sessions
    model = stack.settings.default_model_name
    warm = stack.submit(prompt="warm up", **QUICK)  # the worker loads the model first
    assert stack.wait(warm["id"])["status"] == "succeeded"
    with session_scope(sessions) as s:
        assert dashboard.pause(session=s, model=model, by="test")
    try:
        names: dict[str, str] = {}
        owner: dict[str, requests.Session] = {}
        for http, name, body in [
            *[(a, f"a{n + 1}", {}) for n in range(8)],
            (b, "b1", {}),
            (a, "a-urgent", {"priority": 9, "steps": 4}),
        ]:
            job_id = submit(stack, http, name, **body)
            names[job_id], owner[job_id] = name, http
        # The messages come back again and again while paused (delayed retries, about 20).
        deadline = time.monotonic() + 120
        while stack.worker.log_path.read_text(errors="replace").count("retry: Retry in") < 20:
            assert time.monotonic() < deadline, stack.worker.log_tail(60)
            time.sleep(0.2)
        positions = {names[i]: get(stack, owner[i], i)["queue_position"] for i in names}
    finally:
        with session_scope(sessions) as s:
            dashboard.resume(session=s, model=model)
    done = [wait(stack, owner[job_id], job_id) for job_id in names]
    assert all(j["status"] == "succeeded" for j in done), done
    started = [names[j["id"]] for j in sorted(done, key=lambda j: j["started_at"])]
    assert started == sorted(positions, key=positions.__getitem__), (started, positions)
    assert started[0] == "a-urgent" and positions["a-urgent"] == 0
    assert started.index("b1") == 2  # after A's first: before seven of A's eight
