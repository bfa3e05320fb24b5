"""`make run` as a new user meets it: `python -m daikon.run` with no service URLs set starts an
embedded valkey, migrates SQLite, serves the API with gunicorn and runs a worker; the printed
admin key submits a job that succeeds; a worker that dies is restarted; Ctrl-C stops it all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.stack import ROOT, free_port

pytestmark = pytest.mark.e2e


def wait_for(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_make_run_serves_jobs_restarts_a_dead_worker_and_stops_on_ctrl_c(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    port = free_port()
    env = {
        k: v for k, v in os.environ.items()
        if k not in ("REDIS_URL", "DATABASE_URL", "DAIKON_ADMIN_KEY")
    }  # fmt: skip
    env.update(DAIKON_DATA_DIR=str(tmp_path / "data"), DAIKON_PORT=str(port),
               DAIKON_MODEL=str(tiny_models[0]), DAIKON_CLIP_MODEL=str(tiny_models[1]),
               DAIKON_TORCH_THREADS="1")  # fmt: skip
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "daikon.run"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        key_file = tmp_path / "data" / "admin.key"
        wait_for(key_file.exists, 60, "the admin key")
        key = key_file.read_text().strip()
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {key}"
        wait_for(lambda: requests.get(f"{base}/readyz", timeout=3).status_code == 200, 90,
                 "readiness (API, valkey, storage and a worker heartbeat)")  # fmt: skip
        printed = (tmp_path / "run.log").read_text()
        assert f"admin key: {key}" in printed and "embedded valkey on redis://" in printed

        def run_job(prompt: str) -> dict:  # type: ignore[type-arg]
            r = http.post(f"{base}/v1/jobs", json={"prompt": prompt, "steps": 3, "candidates": 2,
                                                   "top_k": 1}, timeout=10)  # fmt: skip
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            return wait_for(  # type: ignore[no-any-return]
                lambda: (
                    (j := http.get(f"{base}/v1/jobs/{job_id}", timeout=5).json())["status"]
                    in ("succeeded", "failed")
                    and j
                ),
                60,
                f"job {prompt!r}",
            )

        job = run_job("a red circle")
        assert job["status"] == "succeeded", job["error"]
        image = requests.get(job["images"][0]["url"], timeout=10)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

        # Kill the worker's main process: the launcher restarts it, and work continues.
        generation = "celery -A worker[.]main worker"  # not the webhook worker
        worker_pids = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), generation],
                                     capture_output=True, text=True).stdout.split()  # fmt: skip
        assert worker_pids, "no worker child found"
        os.kill(int(worker_pids[0]), signal.SIGKILL)
        wait_for(lambda: "worker exited with code" in (tmp_path / "run.log").read_text(), 30,
                 "the launcher to notice the dead worker")  # fmt: skip
        again = run_job("a blue square")
        assert again["status"] == "succeeded", again["error"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        finally:
            log.close()
    assert proc.returncode == 0
    assert "daikon | stopping" in (tmp_path / "run.log").read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/healthz", timeout=2)
