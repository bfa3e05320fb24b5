"""The cheap poll (api/caches.py, api/serialize.py) answers what the database says: a revoked
key is refused on the very next request in every API process, a cached job object never
outlives a change of its row or progress, a list page takes a fixed number of queries, and a
submitted job is confirmed published (outbox) without a commit of its own."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import event, update

from api.caches import QueuePlaces
from daikon.contract import JobList, JobOut, JobStatus
from db import jobs
from db.models import ApiKey, Job, utcnow
from db.session import session_scope
from server.live import LiveState
from tests.apps import new_tenant
from tests.conftest import ADMIN_KEY, authed
from tests.factories import image, job_params
from tests.stack import gunicorn_api

BODY = {"prompt": "a red circle", "steps": 2, "candidates": 1, "top_k": 1}


@pytest.fixture
def app(make_app) -> Flask:  # type: ignore[no-untyped-def]
    return make_app()


@pytest.fixture
def pg_app(make_app, postgres_url: str) -> Flask:  # type: ignore[no-untyped-def]
    return make_app(database_url=postgres_url)


def _finish(app: Flask, job_id: str) -> None:
    svc = app.extensions["daikon"]
    with session_scope(svc.sessions) as s:
        jobs.claim(session=s, job_id=job_id, worker="w")
        jobs.succeed(
            session=s,
            job_id=job_id,
            seed=7,
            images=[image(1, 30.0), image(2, 29.0)],
            metrics={"total_seconds": 1.0},
            worker="w",
        )


def test_a_revoked_key_is_refused_at_once_by_every_api_process(
    make_app,  # type: ignore[no-untyped-def]
    postgres_url: str,
    tmp_path: Path,
) -> None:
    """Two gunicorn processes, each with the key in its cache (polls of a queued and of a
    finished job, lists, submits, over fresh connections so both serve), then a revocation:
    the very next request of every kind, on whichever process, is a 401."""
    app = make_app(database_url=postgres_url)  # the same database and Redis as the processes
    settings = app.extensions["daikon"].settings
    _, key = new_tenant(app, "speed")
    owner = authed(app, key["key"])
    queued = owner.post("/v1/jobs", json=BODY).get_json()["id"]
    done = owner.post("/v1/jobs", json=BODY).get_json()["id"]
    _finish(app, done)
    with gunicorn_api(settings, tmp_path / "api.log", workers=2) as base:
        auth = {"Authorization": f"Bearer {key['key']}", "Connection": "close"}
        paths = [f"/v1/jobs/{queued}", f"/v1/jobs/{done}", "/v1/jobs?limit=5"]

        def each(expected: int) -> None:
            for _ in range(12):  # new connections: both processes take some
                for path in paths:
                    r = requests.get(base + path, headers=auth, timeout=10)
                    assert r.status_code == expected, (path, r.status_code, r.text)
                r = requests.post(f"{base}/v1/jobs", json=BODY, headers=auth, timeout=10)
                assert r.status_code == (202 if expected == 200 else expected), r.text

        each(200)
        assert (
            requests.get(f"{base}/v1/jobs/{done}", headers=auth, timeout=10).json()["status"]
            == "succeeded"
        )
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        r = requests.delete(f"{base}/v1/admin/keys/{key['id']}", headers=admin, timeout=10)
        assert r.status_code == 200 and r.json()["revoked_at"] is not None
        each(401)
        r = requests.get(base + paths[1], headers=auth, timeout=10)
        assert r.json()["error"]["message"] == "invalid or revoked API key"
        # A missing job with a revoked key: refused as a key, not as a job.
        r = requests.get(f"{base}/v1/jobs/no-such-job", headers=auth, timeout=10)
        assert r.status_code == 401


def test_a_cached_job_object_follows_every_change_of_its_row(pg_app: Flask) -> None:
    svc = pg_app.extensions["daikon"]
    _, key = new_tenant(pg_app, "follow")
    owner = authed(pg_app, key["key"])
    first = owner.post("/v1/jobs", json=BODY).get_json()["id"]
    second = owner.post("/v1/jobs", json=BODY).get_json()["id"]
    r1, r2 = owner.get(f"/v1/jobs/{second}"), owner.get(f"/v1/jobs/{second}")
    ahead = owner.get(f"/v1/jobs/{first}").get_json()["queue_position"]  # other tests' jobs too
    # Behind its tenant's first job (and other tenants' jobs of that turn, in a shared queue).
    place = r2.get_json()["queue_position"]
    assert r1.data == r2.data and place > ahead
    tag = r2.headers["ETag"]
    assert owner.get(f"/v1/jobs/{second}", headers={"If-None-Match": tag}).status_code == 304

    # Another job leaves the queue: the position moves, and so does the ETag.
    assert owner.post(f"/v1/jobs/{first}/cancel").status_code == 200
    r = owner.get(f"/v1/jobs/{second}", headers={"If-None-Match": tag})
    assert r.status_code == 200 and r.get_json()["queue_position"] == place - 1
    assert r.headers["ETag"] != tag

    # Running, then a step: progress and ETag follow.
    with session_scope(svc.sessions) as s:
        jobs.claim(session=s, job_id=second, worker="w")
    r = owner.get(f"/v1/jobs/{second}")
    assert r.get_json()["status"] == "running" and r.get_json()["progress"]["step"] == 0
    running_tag = r.headers["ETag"]
    LiveState(svc.settings.services.redis_url).step(second, 1, 2, 1)
    r = owner.get(f"/v1/jobs/{second}", headers={"If-None-Match": running_tag})
    assert r.status_code == 200 and r.get_json()["progress"] == {
        "step": 1,
        "total": 2,
        "fraction": 0.5,
    }

    # Finished: images with URLs that open; then answered from memory, the same bytes.
    with session_scope(svc.sessions) as s:
        jobs.succeed(
            session=s,
            job_id=second,
            seed=7,
            images=[image(1, 30.0)],
            metrics={"total_seconds": 1.0},
            worker="w",
        )
    r = owner.get(f"/v1/jobs/{second}", headers={"If-None-Match": running_tag})
    assert r.status_code == 200 and r.get_json()["status"] == "succeeded"
    assert r.get_json()["progress"] is None and "sig=" in r.get_json()["images"][0]["url"]
    assert owner.get(f"/v1/jobs/{second}").data == r.data
    finished_tag = r.headers["ETag"]
    assert (
        owner.get(f"/v1/jobs/{second}", headers={"If-None-Match": finished_tag}).status_code == 304
    )
    # Another tenant never gets it from memory either.
    _, other = new_tenant(pg_app, "other")
    assert authed(pg_app, other["key"]).get(f"/v1/jobs/{second}").status_code == 404


def test_a_list_page_takes_a_fixed_number_of_queries(pg_app: Flask) -> None:
    svc = pg_app.extensions["daikon"]
    with session_scope(svc.sessions) as s:
        # Another tenant's jobs that earlier tests left queued on this model would take turns
        # with this tenant's (tests/api/test_dashboard_hardening.py, run first, leaves some).
        s.execute(
            update(Job)
            .where(Job.status == JobStatus.queued)
            .values(status=JobStatus.canceled, finished_at=utcnow())
        )
    _, key = new_tenant(pg_app, "lister")
    owner = authed(pg_app, key["key"])
    ids = [owner.post("/v1/jobs", json=BODY).get_json()["id"] for _ in range(30)]
    for job_id in ids[:10]:
        _finish(pg_app, job_id)
    with session_scope(svc.sessions) as s:
        for job_id in ids[10:20]:
            jobs.claim(session=s, job_id=job_id, worker="w")
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(svc.reads, "before_cursor_execute", count)
    try:
        cold = owner.get("/v1/jobs?limit=25")
        cold_count = len(statements)
        statements.clear()
        warm = owner.get("/v1/jobs?limit=25")
        warm_count = len(statements)
    finally:
        event.remove(svc.reads, "before_cursor_execute", count)
    page = JobList.model_validate(cold.get_json())
    assert [j.id for j in page.jobs] == list(reversed(ids))[:25] and page.has_more
    assert cold_count <= 3, statements  # states; then rows and their images, for all 25
    assert warm_count == 1, statements  # the states only: every body is at hand
    assert warm.data == cold.data
    # Each entry is exactly what GET /v1/jobs/{id} answers.
    for entry in cold.get_json()["jobs"]:
        assert owner.get(f"/v1/jobs/{entry['id']}").get_json() == entry
        JobOut.model_validate(entry)
    queued = [j for j in page.jobs if j.status == "queued"]
    positions = sorted(j.queue_position or 0 for j in queued)  # other tests' jobs are ahead
    assert positions == list(range(positions[0], positions[0] + len(queued)))


def test_a_submitted_job_is_confirmed_published_without_a_commit_of_its_own(
    pg_app: Flask,
) -> None:
    svc = pg_app.extensions["daikon"]
    owner = authed(pg_app)
    ids = [owner.post("/v1/jobs", json=BODY).get_json()["id"] for _ in range(5)]
    deadline = time.monotonic() + 30
    while True:
        with session_scope(svc.sessions) as s:
            marked = [s.get(Job, job_id).enqueued_at for job_id in ids]  # type: ignore[union-attr]
        if all(marked) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert all(marked), marked


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_list_page_shows_each_queued_job_at_the_place_its_own_poll_shows(
    make_app,  # type: ignore[no-untyped-def]
    postgres_url: str,
    database: str,
) -> None:
    """The page ranks each model's queue once (db/jobs.py list_states); what it shows is the
    count a poll makes: priorities, two models, jobs created at the same instant (one after
    the other), running and finished jobs without one."""
    app = make_app(**({"database_url": postgres_url} if database == "postgresql" else {}))
    svc = app.extensions["daikon"]
    _, key = new_tenant(app, f"ranks-{database}")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with session_scope(svc.sessions) as s:
        tenant_id = s.get(ApiKey, key["id"]).tenant_id  # type: ignore[union-attr]
        made = []
        for n, (model, priority) in enumerate(
            [("a", 5), ("a", 9), ("b", 5), ("a", 5), ("a", 1), ("b", 7), ("a", 5), ("a", 5)]
        ):
            job = jobs.create(
                session=s,
                params=job_params(seed=n, model=model),
                tenant_id=tenant_id,
                options=jobs.JobOptions(priority=priority),
            )
            job.created_at = at + timedelta(seconds=n // 2)  # pairs created at one instant
            job.enqueued_at = utcnow()  # as if published: no sweeper of a later test takes it
            made.append(job.id)
        s.flush()
        jobs.claim(session=s, job_id=made[3], worker="w")
    try:
        _compare_page_with_polls(app, key["key"], made)
    finally:  # the database is shared with later tests: leave no old queued jobs behind
        with session_scope(svc.sessions) as s:
            for job_id in made:
                jobs.delete(session=s, job_id=job_id)


def _compare_page_with_polls(app: Flask, key: str, made: list[str]) -> None:
    svc = app.extensions["daikon"]
    owner = authed(app, key)
    page = owner.get("/v1/jobs?limit=50").get_json()["jobs"]
    assert {j["id"] for j in page} == set(made)
    for entry in page:
        alone = owner.get(f"/v1/jobs/{entry['id']}").get_json()
        assert entry["queue_position"] == alone["queue_position"], (entry, alone)
        assert (entry["queue_position"] is None) == (entry["status"] != "queued")
    tied = [next(e for e in page if e["id"] == made[n])["queue_position"] for n in (6, 7)]
    # Same model, priority and instant: still one after the other (the run order is total,
    # the claim starts them one at a time).
    assert tied[0] is not None and tied[1] is not None and abs(tied[0] - tied[1]) == 1
    with session_scope(svc.sessions) as s:
        for job_id in made:
            job = s.get(Job, job_id)
            assert job is not None
            if job.status is JobStatus.queued:
                shown = next(e for e in page if e["id"] == job_id)["queue_position"]
                assert shown == jobs.queue_position(session=s, job=job)


def _with_places(app: Flask, *, deep: int) -> tuple[Any, list[float]]:
    """The app's services with QueuePlaces at a low threshold, its clock (1 s rankings) the
    returned list's one value, which the test moves."""
    now = [0.0]
    places = QueuePlaces(deep=deep, max_age=1.0, clock=lambda: now[0])
    svc = app.extensions["daikon"] = dataclasses.replace(app.extensions["daikon"], places=places)
    return svc, now


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_polls_deep_in_a_queue_share_one_ranking_that_places_them_as_a_count_would(
    make_app,  # type: ignore[no-untyped-def]
    postgres_url: str,
    database: str,
) -> None:
    """api/caches.py QueuePlaces, its threshold lowered to 4 jobs ahead and its clock in the
    test's hand: once a poll counts 4 ahead, the model's polls read one ranking per interval
    (one statement for all of them, not a count each), at the places the count gives; a job
    queued after the ranking is counted; the next interval's ranking shows what changed; a
    queue that has drained is counted again."""
    app = make_app(**({"database_url": postgres_url} if database == "postgresql" else {}))
    svc, now = _with_places(app, deep=4)
    statements: list[str] = []
    event.listen(svc.reads, "before_cursor_execute", lambda *a: statements.append(str(a[2])))
    _, key = new_tenant(app, f"deep-{database}")
    owner = authed(app, key["key"])
    at = datetime(2026, 1, 1, tzinfo=UTC)
    made: list[str] = []

    def queue(n: int, model: str = "a", priority: int = 5) -> str:
        with session_scope(svc.sessions) as s:
            tenant_id = s.get(ApiKey, key["id"]).tenant_id  # type: ignore[union-attr]
            job = jobs.create(
                session=s,
                params=job_params(seed=n, model=model),
                tenant_id=tenant_id,
                options=jobs.JobOptions(priority=priority),
            )
            job.created_at = at + timedelta(seconds=n)
            job.enqueued_at = utcnow()  # as if published: no sweeper of a later test takes it
            made.append(job.id)
            return job.id

    def counted() -> dict[str, int]:
        with session_scope(svc.sessions) as s:
            queued = [
                j for j in (s.get(Job, i) for i in made) if j and j.status is JobStatus.queued
            ]
            return {j.id: jobs.queue_position(session=s, job=j) for j in queued}

    def polled(ids: list[str]) -> dict[str, int]:
        return {i: owner.get(f"/v1/jobs/{i}").get_json()["queue_position"] for i in ids}

    def rankings() -> int:  # QueuePlaces' own (a list page's ranks PARTITION BY model)
        return sum("row_number()" in q.lower() and "partition" not in q.lower() for q in statements)

    def listed() -> dict[str, int]:
        page = owner.get("/v1/jobs?limit=50").get_json()["jobs"]
        return {j["id"]: j["queue_position"] for j in page if j["status"] == "queued"}

    try:
        for n, priority in enumerate([5, 9, 5, 1, 5, 5]):
            queue(n, priority=priority)
        other = queue(6, model="b")  # another model's queue: never ranked, always counted
        a_jobs = made[:6]
        assert polled(a_jobs) == {i: counted()[i] for i in a_jobs}  # the counts themselves
        assert max(polled(a_jobs).values()) >= 4  # deep now: the second round was ranked
        for _ in range(3):  # every poll of the interval from that one ranking
            assert polled(a_jobs) == {i: counted()[i] for i in a_jobs}
        assert listed() == counted()  # a list page places model a's jobs from it too
        assert rankings() == 1
        assert polled([other]) == {other: 0} and rankings() == 1
        late = queue(10, priority=9)  # after the ranking: counted, at its exact place
        assert polled([late]) == {late: counted()[late]} == {late: 1}
        with session_scope(svc.sessions) as s:
            for job_id in made[:2]:  # the first two in the ranking leave the queue
                jobs.cancel(session=s, job_id=job_id)
        shown = polled(a_jobs[2:])
        assert shown != {i: counted()[i] for i in a_jobs[2:]}  # within the interval: as ranked
        assert {i: listed()[i] for i in a_jobs[2:]} == shown
        now[0] += 1.5
        statements.clear()
        rest = [*a_jobs[2:], late]
        assert polled(rest) == {i: counted()[i] for i in rest}
        assert rankings() == 1
        with session_scope(svc.sessions) as s:  # the queue drains to one job
            for job_id in [*a_jobs[2:5], late]:  # made[5] is left
                jobs.cancel(session=s, job_id=job_id)
        now[0] += 1.5
        polled(a_jobs[5:])  # this interval's ranking finds the queue under half of 4
        now[0] += 1.5
        statements.clear()
        assert polled(a_jobs[5:]) == {a_jobs[5]: 0} and counted() == {a_jobs[5]: 0, other: 0}
        assert rankings() == 0  # counted again
    finally:  # the database is shared with later tests: leave no old queued jobs behind
        with session_scope(svc.sessions) as s:
            for job_id in made:
                jobs.delete(session=s, job_id=job_id)


def test_a_submit_to_a_deep_queue_is_placed_from_the_shared_ranking(make_app) -> None:  # type: ignore[no-untyped-def]
    """A submit's reply says its queue position. Counted while the queue is shallow; once a
    count reaches the threshold (lowered to 3), from QueuePlaces' ranking: exact when the
    submit takes the ranking itself, as of the ranking for later ones in its interval (a
    job that left since still counts), by priority (a priority 9 job goes ahead of all)."""
    app = make_app()  # its own SQLite: nothing else queued for the model
    svc, now = _with_places(app, deep=3)
    tenant_id, key = new_tenant(app, "deep-submit")
    owner = authed(app, key["key"])
    allowed = authed(app, ADMIN_KEY).put(
        f"/v1/admin/tenants/{tenant_id}/limits", json={"max_priority": 9}
    )
    assert allowed.status_code == 200, allowed.get_data(as_text=True)
    made: list[str] = []

    def submit(**extra: Any) -> tuple[int, int]:
        """The reply's queue position, and the count of jobs ahead right after it."""
        r = owner.post("/v1/jobs", json={**BODY, **extra})
        assert r.status_code == 202, r.get_data(as_text=True)
        job = r.get_json()
        made.append(job["id"])
        with session_scope(svc.sessions) as s:
            row = s.get(Job, job["id"])
            assert row is not None
            return job["queue_position"], jobs.queue_position(session=s, job=row)

    # Counted (0-3: the fourth makes the queue deep), then ranked by the fifth itself.
    assert [submit() for _ in range(5)] == [(n, n) for n in range(5)]
    with session_scope(svc.sessions) as s:
        jobs.cancel(session=s, job_id=made[0])
    assert submit() == (5, 4)  # as ranked a moment ago: the canceled job was still queued
    now[0] += 1.5
    assert submit() == (5, 5)  # a new ranking: exact again
    assert submit(priority=9) == (0, 0)
