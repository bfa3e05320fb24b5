"""Operations against a real Celery worker process: /readyz with a running worker, GET
/v1/models and /metrics after jobs ran, a job for a model no worker serves waiting queued while
later jobs run, and a stopped worker gone at once. (Without a worker: tests/api/test_ops.py.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from server import stage_metrics
from server.settings import Settings
from tests.metrics import Samples, parse, sample, wait_until
from tests.stack import Stack, running_stack

ADMIN_KEY = "dk_test_ops_admin"
FAST = {"steps": 2, "candidates": 2, "top_k": 1, "seed": 11}


# --- a real worker that serves some of the models ---------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """Three models; the worker serves `default` and `broken` (whose weights do not exist), and
    no worker serves `other`."""
    tmp = tmp_path_factory.mktemp("ops")
    sd, clip = (str(p) for p in tiny_models)
    settings = Settings(
        data_dir=tmp,
        redis_url=redis_url,
        queue=f"daikon-ops-{uuid.uuid4().hex[:8]}",
        models={
            "default": {"pipeline": sd, "clip": clip},
            "other": {"pipeline": sd, "clip": clip},
            "broken": {"pipeline": str(tmp / "no-such-model"), "clip": clip},
        },
        worker_models="default,broken",
        torch_threads=1,
        admin_key=ADMIN_KEY,
    )
    with running_stack(settings, tmp) as s:
        wait_until(
            lambda: s.http.get(s.url("/readyz"), timeout=5).status_code == 200,
            60,
            f"the worker's heartbeat; worker log:\n{s.worker.log_tail()}",
        )
        yield s


def models(stack: Stack) -> dict[str, dict[str, Any]]:
    r = stack.http.get(stack.url("/v1/models"), timeout=10)
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["models"]}


def scrape(stack: Stack) -> Samples:
    r = requests.get(stack.url("/metrics"), timeout=10)  # no API key needed
    assert r.status_code == 200, r.text
    return parse(r.text)


def test_readyz_is_ready_with_a_running_worker(stack: Stack) -> None:
    r = requests.get(stack.url("/readyz"), timeout=10)  # no API key needed
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready"
    assert all(c["ok"] for c in body["checks"].values())
    assert body["checks"]["workers"]["count"] == 1
    assert body["checks"]["workers"]["unserved_models"] == ["other"]


def test_a_job_for_a_model_no_worker_serves_waits_queued_while_later_jobs_run(
    stack: Stack,
) -> None:
    assert requests.get(stack.url("/v1/models"), timeout=10).status_code == 401
    waiting = stack.submit(prompt="for nobody", model="other", **FAST)
    assert (waiting["status"], waiting["queue_position"]) == ("queued", 0)
    later = stack.wait(stack.submit(prompt="a red circle", model="default", **FAST)["id"])
    assert later["status"] == "succeeded", later["error"]

    still = stack.get(waiting["id"])
    assert (still["status"], still["queue_position"], still["started_at"]) == ("queued", 0, None)
    listed = models(stack)
    assert list(listed) == ["default", "other", "broken"]
    cpu = {
        "max_job_cost": 4.0,
        "images_per_call": 4,
        "seconds_per_cost": 120.0,
        "tenant_queued_cost": 200.0,
    }
    capabilities = listed["default"].pop("capabilities")
    assert capabilities["pipeline_class"] == "StableDiffusionPipeline"
    assert listed["default"] == {
        "name": "default",
        "default": True,
        "workers": 1,
        "queued": 0,
        "device": "cpu",
        "limits": cpu,
        "load_errors": {},
    }
    assert listed["broken"]["workers"] == 1
    queued_other = stack.http.get(stack.url("/v1/jobs?status=queued&model=other"), timeout=10)
    assert listed["other"] == {
        "name": "other",
        "default": False,
        "workers": 0,
        "queued": len(queued_other.json()["jobs"]),
        "device": None,
        "limits": None,
        "load_errors": {},
        "capabilities": None,
    }
    assert listed["other"]["queued"] >= 1


def test_metrics_after_jobs_ran_on_a_real_worker(stack: Stack) -> None:
    before = scrape(stack)
    ids = [stack.submit(prompt=f"a blue square {n}", **FAST)["id"] for n in range(3)]
    ids.append(stack.submit(prompt="no weights", model="broken", **FAST)["id"])
    waiting = stack.submit(prompt="for nobody, urgently", model="other", priority=8, **FAST)
    done = [stack.wait(i) for i in ids]
    assert [j["status"] for j in done] == ["succeeded"] * 3 + ["failed"]
    assert done[3]["error"]["code"] == "model_load_failed"
    # The worker's next heartbeat (within HEARTBEAT_SECONDS) reports the failed load and stops
    # counting itself as serving `broken`; wait for it so the gauges below are settled.
    wait_until(
        lambda: bool(models(stack)["broken"]["load_errors"]),
        90,
        "the heartbeat to report broken's load error",
    )
    after = scrape(stack)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("daikon_jobs", status="succeeded") == 3
    assert grew("daikon_jobs", status="failed") == 1
    assert grew("daikon_jobs", status="queued") == 1  # the job for `other`
    assert sample(after, "daikon_jobs", status="running") == 0
    # Every job records its queue and total time; a failed load records no later stage.
    counts = {
        stage: grew("daikon_stage_seconds_count", stage=stage) for stage in stage_metrics.STAGES
    }
    assert counts == {"queue": 4, "load": 3, "inference": 3, "ranking": 3, "upload": 3, "total": 4}
    assert grew("daikon_stage_seconds_sum", stage="inference") > 0
    assert grew("daikon_stage_seconds_bucket", stage="total", le="+Inf") == 4
    # The unserved model's job waits in the broker, at Celery level 9 - 8 = 1.
    assert sample(after, "daikon_queue_depth", model="other", priority="8") == 1
    other_depth = sum(
        sample(after, "daikon_queue_depth", model="other", priority=str(p)) for p in range(10)
    )
    assert other_depth == models(stack)["other"]["queued"]
    assert all(
        sample(after, "daikon_queue_depth", model="default", priority=str(p)) == 0
        for p in range(10)
    )
    assert stack.get(waiting["id"])["status"] == "queued"
    workers_by_model = {
        m: sample(after, "daikon_workers", model=m) for m in ("default", "other", "broken")
    }
    # A worker that failed to load a model no longer counts as serving it.
    assert workers_by_model == {"default": 1, "other": 0, "broken": 0}


def test_a_stopped_worker_is_gone_at_once(stack: Stack) -> None:
    """Last in this module: it stops the module's worker."""
    stack.worker.stop()
    assert stack.worker.proc.returncode == 0, stack.worker.log_tail()
    r = requests.get(stack.url("/readyz"), timeout=10)
    assert r.status_code == 503
    assert r.json()["error"]["message"] == "not ready; failing checks: workers"
    assert models(stack)["default"]["workers"] == 0
