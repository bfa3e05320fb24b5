"""Nothing lost, against a real worker: a pool process SIGKILLed mid-denoise, a job whose
message was never published, and a graceful SIGTERM. (The full fault-injection suite with
broker, storage and database outages is issue 5's `make chaos`.)"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from daikon.contract import JobParams
from db import jobs
from db.models import Job
from db.session import make_engine, make_session_factory, session_scope
from tests.stack import Stack, running_stack, settings_for

pytestmark = pytest.mark.e2e
LONG = {"steps": 150, "candidates": 4, "top_k": 2}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("recovery")
    settings = settings_for(
        tmp, redis_url, tiny_models, republish_after_seconds=2, sweep_interval_seconds=0.5
    )
    with running_stack(settings, tmp) as s:
        yield s


def row(stack: Stack, job_id: str) -> Job:
    sessions = make_session_factory(make_engine(stack.settings.sqlalchemy_url))
    with session_scope(sessions) as s:
        return jobs.get(session=s, job_id=job_id)


def test_a_pool_process_killed_mid_denoise_loses_nothing(stack: Stack) -> None:
    job = stack.submit(prompt="survives a kill", **LONG)
    stack.wait_until(job["id"], lambda j: (j["progress"] or {}).get("step", 0) >= 2)
    owner = row(stack, job["id"]).lease_owner
    assert owner is not None
    os.kill(int(owner.rpartition(":")[2]), signal.SIGKILL)  # the process running the pipeline

    done = stack.wait(job["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert [i["rank"] for i in done["images"]] == [1, 2]  # one set of images, not two
    final = row(stack, job["id"])
    assert final.attempts == 2 and final.lease_owner != owner
    assert stack.worker.proc.poll() is None  # the worker itself lives on


def test_a_job_committed_but_never_published_is_published_by_the_sweeper(stack: Stack) -> None:
    # As if the API died between its commit and its publish: a row, and no message.
    sessions = make_session_factory(make_engine(stack.settings.sqlalchemy_url))
    params = JobParams(
        prompt="orphan",
        negative_prompt=None,
        width=64,
        height=64,
        steps=3,
        guidance_scale=7.5,
        candidates=2,
        top_k=1,
        seed=3,
    )
    with session_scope(sessions) as s:
        job_id = jobs.create(session=s, params=params).id
    started = time.monotonic()
    while time.monotonic() - started < 60:
        if row(stack, job_id).status.value == "succeeded":
            break
        time.sleep(0.2)
    final = row(stack, job_id)
    assert final.status.value == "succeeded" and final.enqueued_at is not None
    assert len(final.images) == 1
    assert "sweeper: published job" in stack.worker.log_tail(400)


def test_sigterm_lets_the_running_job_finish(stack: Stack) -> None:
    """Runs last in this module: it stops the module's worker."""
    job = stack.submit(prompt="finish before leaving", steps=60, candidates=4, top_k=1)
    stack.wait_until(job["id"], lambda j: j["status"] == "running")
    stack.worker.proc.send_signal(signal.SIGTERM)
    assert stack.worker.proc.wait(120) == 0
    final = stack.get(job["id"])
    assert final["status"] == "succeeded" and len(final["images"]) == 1
