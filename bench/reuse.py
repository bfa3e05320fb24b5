"""What an exact repeat costs against the job it repeats (issue 24, item 6): jobs of the
embedded shapes model through the whole service (HTTP, Redis, Celery, SQL, storage) with
DAIKON_REUSE_REPEATS on, each fresh job followed by its exact repeat, which the worker answers
with copies of the fresh job's images instead of running the model.

    .venv/bin/python bench/reuse.py [--rounds 5] [--candidates 8] [--steps N]

Prints the medians and their ratio, as the worker saw them (the jobs' started_at to
finished_at) and as a polling client did (submit to a terminal status). Not in `make bench`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "a red circle above a blue square"


def worker_seconds(job: dict[str, Any]) -> float:
    started = datetime.fromisoformat(job["started_at"])
    return (datetime.fromisoformat(job["finished_at"]) - started).total_seconds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="default: the model's (20)")
    args = ap.parse_args()

    from server.settings import Settings
    from tests.stack import a_redis, running_stack

    body: dict[str, Any] = {"candidates": args.candidates, "top_k": min(2, args.candidates)}
    if args.steps is not None:
        body["steps"] = args.steps
    timings: dict[str, dict[str, list[float]]] = {
        kind: {"worker": [], "client": []} for kind in ("fresh", "repeat")
    }
    load_before = os.getloadavg()[0]
    with a_redis() as redis_url:
        tmp = Path(tempfile.mkdtemp(prefix="daikon-bench-reuse-"))
        settings = Settings(
            data_dir=tmp,
            redis_url=redis_url,
            queue=f"daikon-bench-reuse-{os.getpid()}",
            admin_key="dk_bench",
            reuse_repeats=True,
            worker_models="default",
        )
        with running_stack(settings, tmp) as s:
            s.wait(s.submit(prompt="warm-up", **body)["id"], timeout=300)
            for n in range(args.rounds):
                fresh_id = None
                for kind in ("fresh", "repeat"):
                    t = time.perf_counter()
                    job = s.wait(s.submit(prompt=PROMPT, seed=1000 + n, **body)["id"], timeout=600)
                    timings[kind]["client"].append(time.perf_counter() - t)
                    assert job["status"] == "succeeded", job["error"]
                    assert job["reused_from"] == fresh_id, (kind, job["reused_from"])
                    timings[kind]["worker"].append(worker_seconds(job))
                    fresh_id = job["id"]
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores; load average "
        f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    steps = args.steps or "the model's default"
    print(
        f"shapes model (default), {args.candidates} candidates, top_k {body['top_k']}, "
        f"steps {steps}, {args.rounds} rounds"
    )
    for side in ("worker", "client"):
        fresh = statistics.median(timings["fresh"][side])
        repeat = statistics.median(timings["repeat"][side])
        print(
            f"{side}: fresh {fresh * 1000:.0f} ms, repeat {repeat * 1000:.0f} ms = "
            f"{fresh / repeat:.1f}x faster"
        )


if __name__ == "__main__":
    main()
