"""Priority and the run order (issue 21, item 7): a tenant may use no higher priority than an
admin allowed it; at one priority tenants take turns; whichever message arrives, a worker
starts the head of the queue in the order the queue positions say, across a pause too."""

from __future__ import annotations

import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from daikon.contract import PRIORITY_MAX, JobStatus
from db import dashboard, jobs, tenants
from db.models import Job
from tests.apps import login, new_tenant
from tests.conftest import ADMIN_KEY, authed
from tests.factories import job_params

AT = datetime(2026, 1, 1, tzinfo=UTC)


class Queue:
    """One model's queue of its own in the shared database, filled job by job."""

    def __init__(self, session: Session):
        self.session, self.model, self.n = session, f"prio-{uuid.uuid4().hex[:8]}", 0

    def tenant(self) -> str:
        name = f"t-{uuid.uuid4().hex[:8]}"
        return tenants.create_tenant(session=self.session, name=name).id

    def add(self, tenant_id: str, priority: int = 5, **params: Any) -> str:
        job = jobs.create(
            session=self.session,
            params=job_params(model=self.model, seed=self.n, **params),
            tenant_id=tenant_id,
            options=jobs.JobOptions(priority=priority),
        )
        job.created_at = AT + timedelta(seconds=self.n)  # submission order, one a second
        self.n += 1
        self.session.flush()
        return job.id

    def positions(self, ids: list[str]) -> dict[str, int]:
        """queue_position of each job, checked against every other way positions are read:
        the poll's count, the shared ranking, a list page."""
        s = self.session
        counted = {i: jobs.queue_position(session=s, job=s.get(Job, i)) for i in ids}  # type: ignore[arg-type]
        assert jobs.queue_positions(session=s, job_ids=ids) == counted
        ranking = jobs.queue_ranking(session=s, model=self.model)
        assert {i: ranking.ahead[i] for i in ids} == counted
        page = jobs.list_states(session=s, limit=100, where=jobs.ListFilter(model=self.model))
        assert {p.id: p.queue_position for p in page if p.id in ids} == counted
        return counted

    def acquire(self, job_id: str, worker: str, *, limited: bool = False) -> jobs.Acquired:
        return jobs.acquire(
            session=self.session,
            job_id=job_id,
            worker=worker,
            lease_seconds=60,
            max_attempts=3,
            owner_alive=lambda _: True,
            limited=limited,
        )

    def deliver(self, messages: list[str]) -> list[str]:
        """Deliver each job's message, in this order, to a worker of its own; a message handed
        on (passed_over) is published again, at the back. The jobs in the order they start."""
        started: list[str] = []
        queue, n = deque(messages), 0
        while queue:
            job_id, n = queue.popleft(), n + 1
            got = self.acquire(job_id, f"w:{n}")
            if got.job is not None:
                started.append(got.job.id)
            if got.passed_over is not None:
                assert got.job is not None and got.passed_over.job_id == job_id != got.job.id
                queue.append(job_id)
        return started


def test_tenants_take_turns_and_jobs_start_in_the_order_their_positions_say(
    session: Session,
) -> None:
    """Tenant A queues 8 jobs, then B one at the same priority: B's job is second (turns),
    every way of reading positions agrees, and messages delivered in submission order start
    the jobs in exactly that order (each starts the head of the queue)."""
    q = Queue(session)
    a, b = q.tenant(), q.tenant()
    a_jobs = [q.add(a) for _ in range(8)]
    b_job = q.add(b)
    made = [*a_jobs, b_job]
    placed = q.positions(made)
    assert sorted(placed.values()) == list(range(9))
    assert placed[b_job] == 1  # after A's first, before A's seven others
    assert q.deliver(made) == sorted(made, key=placed.__getitem__)


def test_a_tenant_that_joins_later_takes_the_next_turn_not_the_end_of_the_queue(
    session: Session,
) -> None:
    q = Queue(session)
    a, b, c = q.tenant(), q.tenant(), q.tenant()
    a_jobs = [q.add(a) for _ in range(4)]
    b_jobs = [q.add(b) for _ in range(2)]
    assert q.deliver(a_jobs[:1]) == a_jobs[:1]  # A's first started
    c_job = q.add(c)  # C had nothing queued: it joins the round being served (B's first's)
    placed = q.positions([*a_jobs[1:], *b_jobs, c_job])
    # Turn 0: b1, c1 (by age). Turn 1: a2, b2. Then a3, a4.
    assert sorted(placed, key=placed.__getitem__) == [
        b_jobs[0],
        c_job,
        a_jobs[1],
        b_jobs[1],
        a_jobs[2],
        a_jobs[3],
    ]
    c_next = q.add(c)  # its next goes one turn past its last, not after all of A's
    assert q.positions([c_next])[c_next] == 4  # after b2, before a3


def test_priority_comes_first_then_turns(session: Session) -> None:
    q = Queue(session)
    a, b = q.tenant(), q.tenant()
    low, a5, b5, a9, b9 = q.add(a, 1), q.add(a), q.add(b), q.add(a, 9), q.add(b, 9)
    a9b = q.add(a, 9)
    placed = q.positions([low, a5, b5, a9, b9, a9b])
    order = [a9, b9, a9b, a5, b5, low]
    assert sorted(placed, key=placed.__getitem__) == order
    assert q.deliver([low, a5, b5, a9, b9, a9b]) == order


def test_after_a_pause_and_resume_jobs_start_in_priority_then_submission_order(
    session: Session,
) -> None:
    """Messages that came back during the pause do not decide the order: the first message
    after the resume, a priority-5 job's, starts the priority-9 job submitted last."""
    q = Queue(session)
    a, b = q.tenant(), q.tenant()
    assert dashboard.pause(session=session, model=q.model, by="test")
    fives = [q.add(a) for _ in range(3)]
    nine = q.add(b, 9)
    for job_id in [*fives, nine]:
        got = q.acquire(job_id, "w:paused")
        assert got.paused and got.job is None
    placed = q.positions([*fives, nine])
    assert placed[nine] == 0 and [placed[f] for f in fives] == [1, 2, 3]
    assert dashboard.resume(session=session, model=q.model)
    got = q.acquire(fives[0], "w:1")  # the first retried message due: a priority-5 job's
    assert got.job is not None and got.job.id == nine
    assert got.passed_over is not None and got.passed_over.job_id == fives[0]
    # Its own job lost its message to the head: cleared, so the sweeper publishes it if the
    # worker cannot.
    assert session.get(Job, fives[0], populate_existing=True).enqueued_at is None  # type: ignore[union-attr]
    assert q.deliver([fives[2], fives[1], fives[0]]) == fives


def test_a_message_whose_time_limits_do_not_cover_the_head_hands_it_a_message(
    session: Session,
) -> None:
    """A message carries time limits sized for its own job: it never starts a costlier head
    (Celery would stop it early); that head gets a message of its own at the top, once."""
    q = Queue(session)
    a = q.tenant()
    cheap = q.add(a, steps=2)
    costly = q.add(a, 9, steps=20)
    got = q.acquire(cheap, "w:1", limited=True)
    assert got.job is None and got.busy_for == jobs.HANDOFF_RECHECK_SECONDS
    assert got.handoff == jobs.ToPublish(costly, q.model, PRIORITY_MAX)
    again = q.acquire(cheap, "w:2", limited=True)  # already handed one: not again
    assert again.job is None and again.busy_for is not None and again.handoff is None
    assert session.get(Job, cheap, populate_existing=True).status is JobStatus.queued  # type: ignore[union-attr]
    got = q.acquire(costly, "w:3", limited=True)
    assert got.job is not None and got.job.id == costly and got.passed_over is None
    # Unlimited (the deployment's limits: a republished message) starts any head.
    other = q.add(a, 9, steps=20)
    got = q.acquire(cheap, "w:4")
    assert got.job is not None and got.job.id == other and got.passed_over is not None


# --- the highest priority a tenant may use --------------------------------------------------


@pytest.fixture
def app(make_app: Any, queue_name: str) -> Flask:
    return make_app(webhook_queue=f"{queue_name}-wh")  # type: ignore[no-any-return]


def test_a_tenant_may_not_ask_for_more_than_its_highest_priority(app: Flask) -> None:
    tenant_id, key = new_tenant(app, "prio-cap")
    api = authed(app, key["key"])
    r = api.post("/v1/jobs", json={"prompt": "p", "priority": 6})
    error = r.get_json()["error"]
    assert r.status_code == 422 and error["param"] == "priority"
    assert "priority: 6 is above this tenant's highest priority of 5" in error["message"]
    assert api.get("/v1/jobs").get_json()["jobs"] == []  # nothing was created
    assert api.post("/v1/jobs", json={"prompt": "p", "priority": 5}).status_code == 202
    assert api.post("/v1/jobs", json={"prompt": "p", "priority": 0}).status_code == 202
    # The admin's own tenant may use every priority.
    admin = authed(app, ADMIN_KEY)
    assert admin.post("/v1/jobs", json={"prompt": "p", "priority": 9}).status_code == 202

    # An admin raises it (admin API); it applies from the next request.
    r = admin.put(f"/v1/admin/tenants/{tenant_id}/limits", json={"max_priority": 7})
    assert r.status_code == 200 and r.get_json()["max_priority"] == 7
    assert admin.get(f"/v1/admin/tenants/{tenant_id}/limits").get_json() == r.get_json()
    assert api.post("/v1/jobs", json={"prompt": "p", "priority": 7}).status_code == 202
    r = api.post("/v1/jobs", json={"prompt": "p", "priority": 8})
    assert r.status_code == 422 and "highest priority of 7" in r.get_json()["error"]["message"]
    # Only an admin sets it, and only from the default priority up to the highest.
    assert (
        api.put(f"/v1/admin/tenants/{tenant_id}/limits", json={"max_priority": 9}).status_code
        == 403
    )
    for bad in (4, 10, "9"):
        r = admin.put(f"/v1/admin/tenants/{tenant_id}/limits", json={"max_priority": bad})
        assert r.status_code == 422 and "max_priority" in r.text, (bad, r.text)
    # Null: the deployment's again.
    r = admin.put(f"/v1/admin/tenants/{tenant_id}/limits", json={})
    assert r.status_code == 200 and r.get_json()["max_priority"] is None
    assert api.post("/v1/jobs", json={"prompt": "p", "priority": 7}).status_code == 422


def test_the_deployment_sets_the_default_highest_priority(make_app: Any) -> None:
    app = make_app(tenant_max_priority=8)
    _, key = new_tenant(app, "prio-deployment")
    api = authed(app, key["key"])
    assert api.post("/v1/jobs", json={"prompt": "p", "priority": 8}).status_code == 202
    assert api.post("/v1/jobs", json={"prompt": "p", "priority": 9}).status_code == 422


def test_the_dashboard_sets_a_tenants_highest_priority(app: Flask) -> None:
    tenant_id, key = new_tenant(app, "prio-dash")
    client, token = login(app)
    page = client.get(f"/admin/tenants/{tenant_id}").text
    assert 'name="max_priority"' in page and 'placeholder="5"' in page
    form = {
        "csrf_token": token,
        "submits_per_minute": "",
        "max_active_jobs": "",
        "max_candidates": "",
    }
    for bad in ("4", "10", "nine"):
        r = client.post(f"/admin/tenants/{tenant_id}/limits", data={**form, "max_priority": bad})
        assert r.status_code == 422 and "max_priority" in r.text
    r = client.post(f"/admin/tenants/{tenant_id}/limits", data={**form, "max_priority": "9"})
    assert r.status_code == 303
    api = authed(app, key["key"])
    assert api.post("/v1/jobs", json={"prompt": "p", "priority": 9}).status_code == 202
