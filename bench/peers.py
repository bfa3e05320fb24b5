"""Benchmark 6: the same jobs through the peers a user would pick instead of Daikon, measured
side by side in one run on the embedded shapes pipeline (one image per job, CLIP-ranked, PNG):

- the pipeline called directly in this process (the work itself, no service);
- Cog's HTTP server (`cog` from PyPI, no Docker) with bench/cog_predict.py;
- a plain Celery task on the same Redis, one worker process started here, no bookkeeping;
- Daikon through the whole service (tests/stack.py: HTTP, Redis, Celery, database, storage),
  each client waiting on its job's event stream, then again polling it at 20 Hz.

Each runs N jobs one at a time, then a burst of C concurrent clients (one job each). Cog has no
queue: a busy server answers 409, and its clients retry every 50 ms (counted).

    .venv/bin/python bench/peers.py [--jobs 10] [--burst 16] [--size 64] [--steps 20]
        [--threads 1] [--rounds 3]

All peers are started and warmed up first; each round then measures every peer in turn, and
the table gives each figure's median over the rounds with its range.

Every peer runs torch with the same threads (--threads, default 1): on a shared, oversubscribed
machine torch's default (one per core) can run ten times slower than one thread, which would
measure the machine's load rather than the peers.

Cog is the optional `bench` extra (`pip install -e '.[bench]'`, which `make bench` does); when
it is missing, its rows say skipped. This file is also the plain Celery task's app
(`celery -A peers`, run from bench/).
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from celery import Celery

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

PROMPT = "a red circle above a blue square"
RETRY_SECONDS = 0.05  # a Cog client's back-off after a 409

# --- the plain Celery peer: a task, its app, nothing else -------------------------------------

app = Celery(
    "daikon-peer",
    broker=os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.task_default_queue = os.environ.get("PEER_QUEUE", "daikon-peer")
_job: Any = None


@app.task(name="peer.generate")
def generate(prompt: str, seed: int, size: int, steps: int) -> str:
    """One job's work; the PNG comes back through the result backend, as base64."""
    global _job
    if _job is None:
        from peer_job import ShapesJob

        _job = ShapesJob()
    return base64.b64encode(_job.png(prompt, seed, size, steps)).decode()


# --- measuring --------------------------------------------------------------------------------


def one_at_a_time(run: Callable[[int], Any], n: int) -> float:
    """Jobs per second, each started when the last one's image is back."""
    t = time.perf_counter()
    for i in range(n):
        run(1000 + i)
    return n / (time.perf_counter() - t)


def burst(run: Callable[[int], Any], clients: int) -> float:
    """Jobs per second when `clients` clients each want one image at the same moment."""
    start = threading.Barrier(clients + 1)

    def client(i: int) -> Any:
        start.wait()
        return run(2000 + i)

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, i) for i in range(clients)]
        start.wait()
        t = time.perf_counter()
        for f in futures:
            f.result()
        return clients / (time.perf_counter() - t)


def child_env(**extra: str) -> dict[str, str]:
    """The venv's python first on PATH (coglet starts `python`) and this checkout importable."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    pythonpath = os.pathsep.join([str(BENCH), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PATH": path, "PYTHONPATH": pythonpath, **extra}


def stop(proc: subprocess.Popen[bytes]) -> None:
    from server.launcher import stop_process

    stop_process(proc, 30)


@contextmanager
def cog_server(log: Path) -> Iterator[str]:
    import requests

    from tests.stack import free_port

    port = free_port()
    env = child_env(COG_PREDICT_TYPE_STUB="bench/cog_predict.py:Predictor", PORT=str(port))
    with log.open("wb") as out:
        argv = [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"]
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    status = requests.get(f"{base}/health-check", timeout=5).json()["status"]
                except requests.ConnectionError:
                    status = "not listening"
                if status == "READY":
                    break
                if time.monotonic() > deadline or proc.poll() is not None or "FAIL" in status:
                    raise SystemExit(f"cog did not start ({status}):\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            yield base
        finally:
            stop(proc)


def cog_client(base: str, size: int, steps: int, busy: list[int]) -> Callable[[int], Any]:
    import requests

    local = threading.local()

    def run(seed: int) -> Any:
        http = getattr(local, "http", None) or requests.Session()
        local.http = http
        body = {"input": {"prompt": f"{PROMPT} {seed}", "seed": seed, "size": size, "steps": steps}}
        while True:
            r = http.post(f"{base}/predictions", json=body, timeout=600)
            if r.status_code != 409:
                break
            busy.append(1)
            time.sleep(RETRY_SECONDS)
        r.raise_for_status()
        out = r.json()
        assert out["status"] == "succeeded", out
        assert str(out["output"]).startswith("data:image/png;base64,"), str(out)[:200]
        return out

    return run


@contextmanager
def celery_worker(redis_url: str, queue: str, log: Path) -> Iterator[None]:
    env = child_env(PEER_REDIS_URL=redis_url, PEER_QUEUE=queue)
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "peers",
        "worker",
        "--concurrency",
        "1",
        "--queues",
        queue,
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "WARNING",
        "--hostname",
        f"{queue}@%h",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=BENCH, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield
        finally:
            stop(proc)


def daikon_client(
    base: str,
    key: str,
    body: dict[str, Any],
    *,
    poll: float | None = None,
    sizes: list[int] | None = None,
) -> Callable[[int], Any]:
    """Submit, then wait on the job's event stream (woken by the worker's notices), or poll
    `GET /v1/jobs/{id}` every `poll` seconds."""
    import json

    import requests

    local = threading.local()
    sizes = [] if sizes is None else sizes  # each job's batch size, as the worker ran it

    def run(seed: int) -> Any:
        job = wait(seed)
        sizes.append(int(job["metrics"].get("batch_size", 1)))
        return job

    def wait(seed: int) -> Any:
        http = getattr(local, "http", None)
        if http is None:
            http = local.http = requests.Session()
            http.headers["Authorization"] = f"Bearer {key}"
        r = http.post(
            f"{base}/v1/jobs", json={**body, "prompt": f"{PROMPT} {seed}", "seed": seed}, timeout=30
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        while poll is not None:
            job = http.get(f"{base}/v1/jobs/{job_id}", timeout=30).json()
            if job["status"] in ("succeeded", "failed", "canceled"):
                assert job["status"] == "succeeded", job
                return job
            time.sleep(poll)
        with http.get(f"{base}/v1/jobs/{job_id}/events", stream=True, timeout=600) as events:
            done = False
            for line in events.iter_lines(decode_unicode=True):
                if line == "event: done":
                    done = True
                elif done and line.startswith("data:"):
                    job = json.loads(line[5:])
                    assert job["status"] == "succeeded", job
                    return job
        raise AssertionError(f"job {job_id}: the event stream closed before `done`")

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10, help="jobs one at a time, per peer")
    ap.add_argument("--burst", type=int, default=16, help="concurrent clients, one job each")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, every peer alike")
    ap.add_argument("--rounds", type=int, default=3, help="each peer measured this often")
    args = ap.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    os.environ["PEER_TORCH_THREADS"] = str(args.threads)  # this process's and its children's

    import torch
    from peer_job import ShapesJob  # bench/, on the path as this script's folder

    from server.settings import EMBEDDED_CLIP, EMBEDDED_PIPELINE, Settings
    from tests.stack import a_redis, running_stack

    tmp = Path(tempfile.mkdtemp(prefix="daikon-peers-"))
    load_before = os.getloadavg()[0]  # a shared machine's other work, said with the figures
    samples: dict[str, list[tuple[float, float]]] = {}
    busy: list[int] = []
    batches: dict[str, list[int]] = {"daikon": [], "daikon-poll": []}
    key = "dk_bench_peers"
    body = {
        "width": args.size,
        "height": args.size,
        "steps": args.steps,
        "candidates": 1,
        "top_k": 1,
    }

    with a_redis() as redis_url, ExitStack() as up:
        # Every peer is started and warm before any is measured, and the rounds take them in
        # turn: a change of the machine's load then falls on all of them, not on one.
        runners: dict[str, tuple[Callable[[int], Any], Callable[[int], Any]]] = {}
        direct = ShapesJob()

        def direct_run(seed: int) -> Any:
            return direct.png(f"{PROMPT} {seed}", seed, args.size, args.steps)

        runners["direct"] = (direct_run, direct_run)
        if importlib.util.find_spec("cog") is None:
            print("cog: not installed, skipped (pip install -e '.[bench]')", flush=True)
        else:
            base = up.enter_context(cog_server(tmp / "cog.log"))
            cog_run = cog_client(base, args.size, args.steps, busy)
            runners["cog"] = (cog_run, cog_run)

        queue = f"daikon-peer-{os.getpid()}"
        app.conf.broker_url = app.conf.result_backend = redis_url
        up.enter_context(celery_worker(redis_url, queue, tmp / "celery.log"))

        def celery_run(seed: int) -> Any:
            return generate.apply_async(
                (f"{PROMPT} {seed}", seed, args.size, args.steps), queue=queue
            ).get(timeout=600)

        runners["celery"] = (celery_run, celery_run)
        settings = Settings(
            data_dir=tmp / "daikon",
            redis_url=redis_url,
            queue=f"daikon-bench-peers-{os.getpid()}",
            model=EMBEDDED_PIPELINE,
            clip_model=EMBEDDED_CLIP,
            admin_key=key,
            torch_threads=args.threads,
            tenant_max_active_jobs=100_000,
            tenant_submits_per_minute=100_000,
        )
        s = up.enter_context(running_stack(settings, tmp))
        for name, poll in (("daikon", None), ("daikon-poll", RETRY_SECONDS)):
            runners[name] = (
                daikon_client(s.base_url, key, body, poll=poll),
                daikon_client(s.base_url, key, body, poll=poll, sizes=batches[name]),
            )
        for alone, _ in runners.values():
            alone(0)  # warm-up: each loads its model at its first job
        for r in range(args.rounds):
            for name, (alone, crowd) in runners.items():
                rate = one_at_a_time(alone, args.jobs)
                rates_burst = burst(crowd, args.burst) if name != "direct" else float("nan")
                samples.setdefault(name, []).append((rate, rates_burst))
            print(f"round {r + 1} of {args.rounds}: done", flush=True)

    rates: dict[str, tuple[float, float] | None] = {
        name: (statistics.median(x[0] for x in got), statistics.median(x[1] for x in got))
        for name, got in samples.items()
    }
    rates.setdefault("cog", None)

    def fmt(name: str, i: int) -> str:
        r = rates[name]
        if r is None:
            return "skipped"
        got = [x[i] for x in samples[name]]
        spread = f" ({min(got):.2f}-{max(got):.2f})" if len(got) > 1 else ""
        return f"{r[i]:.2f} jobs/s{spread}"

    print(
        f"load average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
        f"end, on {os.cpu_count()} cores"
    )
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}; shapes model {args.size} px, {args.steps} steps, one "
        f"image per job; {args.jobs} jobs one at a time, bursts of {args.burst} "
        f"clients; medians of {args.rounds} rounds (min-max)"
    )
    print("| peer | one at a time | burst |\n|---|---:|---:|")
    print(f"| direct call (no service) | {fmt('direct', 0)} | |")
    for name, label in (
        ("cog", "Cog HTTP server"),
        ("celery", "plain Celery task"),
        ("daikon", "Daikon (whole service, event stream)"),
        ("daikon-poll", "Daikon (whole service, polls at 20 Hz)"),
    ):
        print(f"| {label} | {fmt(name, 0)} | {fmt(name, 1)} |")
    for name, sizes in batches.items():
        print(f"{name}: mean batch size in the burst {sum(sizes) / len(sizes):.1f}")
    c, p = rates["cog"], rates["celery"]
    assert p is not None
    for name, how in (("daikon", "event stream"), ("daikon-poll", "polls")):
        d = rates[name]
        assert d is not None
        if c is None:
            print(f"6. Daikon ({how}) vs Cog: skipped (cog not installed)")
        else:
            print(
                f"6. Daikon ({how}) vs Cog one at a time: {d[0]:.2f} vs {c[0]:.2f} jobs/s = "
                f"{d[0] / c[0]:.2f}x (target >= 1); burst of {args.burst}: {d[1]:.2f} vs "
                f"{c[1]:.2f} jobs/s = {d[1] / c[1]:.2f}x (target > 1)"
            )
        print(
            f"6. Daikon ({how}) vs plain Celery: one at a time {d[0] / p[0]:.2f}x, burst "
            f"{d[1] / p[1]:.2f}x"
        )
    if c is not None:
        print(
            f"6. Cog answered {len(busy)} 409s (busy) to the burst's clients, retried after "
            f"{1000 * RETRY_SECONDS:.0f} ms each"
        )


if __name__ == "__main__":
    main()
