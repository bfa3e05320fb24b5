"""Live behaviour against a real worker: progress, event streams, cancel mid-denoise, the
cancel/finish race, and priority order under load."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from server import keys
from tests.stack import Stack, running_stack, settings_for

pytestmark = pytest.mark.e2e
QUICK = {"steps": 3, "candidates": 2, "top_k": 1}
LONG = {"steps": 150, "candidates": 4, "top_k": 1}  # several seconds on the tiny model


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("live")
    with running_stack(settings_for(tmp, redis_url, tiny_models), tmp) as s:
        yield s


def read_events(stack: Stack, job_id: str, last_id: str | None = None) -> list[dict[str, Any]]:
    """Every event of one SSE response, until the server closes it."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    events: list[dict[str, Any]] = []
    with stack.http.get(
        stack.url(f"/v1/jobs/{job_id}/events"), headers=headers, stream=True, timeout=120
    ) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith(":"):
                continue
            if not line:
                if current:
                    events.append(current)
                current = {}
                continue
            field, _, value = line.partition(": ")
            current[field] = json.loads(value) if field == "data" else value
    return events


def test_events_stream_status_progress_and_the_finished_job_then_close(stack: Stack) -> None:
    job = stack.submit(prompt="a red circle", steps=30, candidates=2, top_k=1)
    events = read_events(stack, job["id"])
    kinds = [e["event"] for e in events]
    assert kinds[0] == "status" and kinds[-1] == "done" and kinds.count("done") == 1
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # strictly increasing
    steps = [e["data"]["step"] for e in events if e["event"] == "progress"]
    assert steps and steps == sorted(steps) and steps[-1] <= 30
    assert all(e["data"]["total"] == 30 for e in events if e["event"] == "progress")
    done = events[-1]["data"]
    assert done["status"] == "succeeded" and len(done["images"]) == 1

    # Resuming after any event still delivers the final one; after the final one, nothing.
    resumed = read_events(stack, job["id"], last_id=events[1]["id"])
    assert [e["event"] for e in resumed] == ["done"] and resumed[0]["data"]["id"] == job["id"]
    assert read_events(stack, job["id"], last_id=events[-1]["id"]) == []


def test_a_stream_throttled_between_steps_still_ends_as_soon_as_the_job_does(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps are read at most every MIN_READ_INTERVAL; a change of status never waits for it.
    With the interval an hour long, a stream that waited for it would not end in the 120 s
    read_events allows."""
    from api import streams

    monkeypatch.setattr(streams, "MIN_READ_INTERVAL", 3600.0)
    job = stack.submit(prompt="a red circle", steps=30, candidates=2, top_k=1)
    events = read_events(stack, job["id"])
    assert events[-1]["event"] == "done" and events[-1]["data"]["status"] == "succeeded"
    assert len([e for e in events if e["event"] == "progress"]) <= 1  # the steps throttled


def test_a_running_job_reports_progress_and_cancel_stops_it_within_a_step(
    stack: Stack, redis_url: str
) -> None:
    job = stack.submit(prompt="a long one", **LONG)
    running = stack.wait_until(job["id"], lambda j: (j["progress"] or {}).get("step", 0) >= 3)
    assert running["status"] == "running" and running["progress"]["total"] == 150
    assert 0 < running["progress"]["fraction"] < 1

    r = stack.http.post(stack.url(f"/v1/jobs/{job['id']}/cancel"), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    steps = redis.Redis.from_url(redis_url)
    step_at_cancel = int(steps.hget(keys.progress(job["id"]), "step") or 0)
    time.sleep(1.5)
    step_later = int(steps.hget(keys.progress(job["id"]), "step") or 0)
    assert step_later - step_at_cancel <= 1, "the worker kept denoising after the cancel"
    assert step_later < 150

    after = stack.wait(stack.submit(prompt="next", **QUICK)["id"])  # the worker is free again
    assert after["status"] == "succeeded"
    final = stack.get(job["id"])
    assert (final["status"], final["images"], final["error"]) == ("canceled", [], None)
    assert "canceled while running; stopped" in stack.worker.log_tail(300)


def test_a_cancel_of_a_job_with_many_candidates_frees_the_worker_within_a_chunks_step(
    stack: Stack, redis_url: str
) -> None:
    """16 candidates run 4 at a time on a CPU worker (DAIKON_IMAGES_PER_CALL's device default):
    a step is one step of one chunk, so the cancel stops the run within one such step."""
    job = stack.submit(prompt="a crowd", steps=60, candidates=16, top_k=2)
    running = stack.wait_until(job["id"], lambda j: (j["progress"] or {}).get("step", 0) >= 63)
    assert running["progress"]["total"] == 4 * 60  # four chunks of 60 steps each
    r = stack.http.post(stack.url(f"/v1/jobs/{job['id']}/cancel"), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    steps = redis.Redis.from_url(redis_url)
    step_at_cancel = int(steps.hget(keys.progress(job["id"]), "step") or 0)
    time.sleep(1.5)
    step_later = int(steps.hget(keys.progress(job["id"]), "step") or 0)
    assert step_later - step_at_cancel <= 1, "the worker kept denoising after the cancel"
    after = stack.wait(stack.submit(prompt="next", **QUICK)["id"])  # the worker is free again
    assert after["status"] == "succeeded"


def test_a_canceled_queued_job_never_runs(stack: Stack) -> None:
    blocker = stack.submit(prompt="blocker", **LONG)
    stack.wait_until(blocker["id"], lambda j: j["status"] == "running")
    queued = stack.submit(prompt="never", **QUICK)
    assert stack.get(queued["id"])["queue_position"] == 0
    assert stack.http.post(stack.url(f"/v1/jobs/{queued['id']}/cancel")).json()["status"] == (
        "canceled"
    )
    stack.http.post(stack.url(f"/v1/jobs/{blocker['id']}/cancel"))
    stack.wait(stack.submit(prompt="sentinel", **QUICK)["id"])  # FIFO: the canceled one went by
    final = stack.get(queued["id"])
    assert final["status"] == "canceled" and final["started_at"] is None


def test_cancel_racing_completion_ends_in_exactly_one_terminal_state(stack: Stack) -> None:
    ids = [stack.submit(prompt=f"race {i}", **QUICK)["id"] for i in range(10)]
    first = time.monotonic()
    for i, job_id in enumerate(ids):  # cancel at staggered moments across the run
        time.sleep(max(0.0, first + i * 0.12 - time.monotonic()))
        stack.http.post(stack.url(f"/v1/jobs/{job_id}/cancel"))
    finished = [stack.wait(j) for j in ids]
    store = stack.settings.local_storage_path
    for job in finished:
        files = sorted(p.name for p in (store / job["id"]).glob("*.png"))
        if job["status"] == "canceled":
            assert job["images"] == [] and files == [], job
        else:
            assert job["status"] == "succeeded" and len(job["images"]) == 1
            assert files == ["rank-1.png"]


def test_higher_priority_runs_first_under_load(stack: Stack) -> None:
    blocker = stack.submit(prompt="blocker", steps=60, candidates=4, top_k=1)
    stack.wait_until(blocker["id"], lambda j: j["status"] == "running")
    names = {}
    for name, priority in [("p0", 0), ("p9", 9), ("p5", 5), ("p9b", 9), ("p1", 1)]:
        names[stack.submit(prompt=name, priority=priority, **QUICK)["id"]] = name
    done = [stack.wait(job_id) for job_id in names]
    order = [names[j["id"]] for j in sorted(done, key=lambda j: j["started_at"])]
    assert order == ["p9", "p9b", "p5", "p1", "p0"]
