"""`make run` as a new user meets it: `python -m server.launcher` with no service URLs or models set
starts an embedded valkey, migrates SQLite, serves the API with gunicorn and runs a worker on the
committed shapes models; the printed admin key submits a prompt and gets back a picture of it;
a worker that dies is restarted; Ctrl-C stops it all."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
from PIL import Image

from shapeworld.oracle import judge
from tests.stack import ROOT, free_port

pytestmark = pytest.mark.e2e
SEED = 7  # the CLIP pick of 8 matched both prompts for each of seeds 0 to 19
# The token model, DALL-E 1's way: 64 samples, its CLIP keeps 2. One object: the pick of 64 is
# right for 89% of held-out prompts, two objects for 35% (docs/quality.md, the seed's story), so
# the pair is not asserted here.
TOKEN_PROMPT = "a red circle"
TOKEN_SEED = 7


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


def test_make_run_draws_the_prompt_restarts_a_dead_worker_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    port = free_port()
    unset = ("REDIS_URL", "DATABASE_URL", "DAIKON_ADMIN_KEY", "DAIKON_MODEL", "DAIKON_CLIP_MODEL")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(
        DAIKON_DATA_DIR=str(tmp_path / "data"), DAIKON_PORT=str(port), DAIKON_TORCH_THREADS="1"
    )
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.launcher"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        key_file = tmp_path / "data" / "admin.key"
        wait_for(key_file.exists, 60, "the admin key")
        key = key_file.read_text().strip()
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {key}"
        wait_for(
            lambda: requests.get(f"{base}/readyz", timeout=3).status_code == 200,
            90,
            "readiness (API, valkey, storage and a worker heartbeat)",
        )
        printed = (tmp_path / "run.log").read_text()
        assert f"admin key: {key}" in printed
        # The embedded valkey wants its password, which is in the data dir and in no log.
        port_of_valkey = int(re.search(r"embedded valkey on 127\.0\.0\.1:(\d+)", printed)[1])  # type: ignore[index]
        password = (tmp_path / "data" / "valkey.password").read_text().strip()
        assert len(password) >= 32 and password not in printed
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port_of_valkey).ping()
        assert redis.Redis(port=port_of_valkey, password=password).ping()

        def run_job(prompt: str, **more: object) -> dict:  # type: ignore[type-arg]
            body = {"prompt": prompt, "candidates": 8, "top_k": 1, "seed": SEED, **more}
            r = http.post(f"{base}/v1/jobs", json=body, timeout=10)
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

        def drawn(job: dict, rank: int = 1) -> Image.Image:  # type: ignore[type-arg]
            assert job["status"] == "succeeded", job["error"]
            r = requests.get(job["images"][rank - 1]["url"], timeout=10)
            assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
            return Image.open(io.BytesIO(r.content))

        prompt = "a red circle above a blue square"
        image = drawn(run_job(prompt))
        assert image.size == (32, 32)  # the embedded models' default size
        verdict = judge(prompt, image)
        assert verdict.match, verdict.reason

        # Kill the worker's main process: the launcher restarts it, and work continues.
        generation = "celery -A worker[.]main worker"  # not the webhook worker
        worker_pids = subprocess.run(
            ["pgrep", "-f", "-P", str(proc.pid), generation], capture_output=True, text=True
        ).stdout.split()
        assert worker_pids, "no worker child found"
        os.kill(int(worker_pids[0]), signal.SIGKILL)
        wait_for(
            lambda: "worker exited with code" in (tmp_path / "run.log").read_text(),
            30,
            "the launcher to notice the dead worker",
        )
        verdict = judge("a yellow triangle", drawn(run_job("a yellow triangle")))
        assert verdict.match, verdict.reason
        # The token model served beside it: many samples, CLIP's two best kept.
        tokens = run_job(TOKEN_PROMPT, model="shapes-ar", candidates=64, top_k=2, seed=TOKEN_SEED)
        assert [i["rank"] for i in tokens["images"]] == [1, 2]
        for rank in (1, 2):
            verdict = judge(TOKEN_PROMPT, drawn(tokens, rank))
            assert verdict.match, (rank, verdict.reason)
        # Everything the data dir holds (database and its WAL, keys, images, the broker's
        # files) is the owner's alone.
        data = tmp_path / "data"
        modes = {str(p.relative_to(data)): oct(p.stat().st_mode & 0o777) for p in data.rglob("*")}
        assert oct(data.stat().st_mode & 0o777) == "0o700"
        assert {"daikon.db", "daikon.db-wal", "secret.key", "valkey.password"} <= set(modes)
        assert any(name.endswith(".png") for name in modes)
        loose = {
            name: mode
            for name, mode in modes.items()
            if mode != ("0o700" if (data / name).is_dir() else "0o600")
        }
        assert loose == {}
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
