"""Seconds per job through the whole service versus the same work called directly, one run.

Direct: the pipeline call + CLIP ranking + PNG encoding, in this process.
Service: POST /v1/jobs over HTTP, the real Celery worker process on Redis, SQLite, local
storage, polled every 50 ms until terminal (what a client sees), same parameters and seeds.

    .venv/bin/python bench/service_vs_direct.py [--jobs 10] [--steps 20] [--candidates 4]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, direct and in the worker alike (0 = torch's default)",
    )
    args = parser.parse_args()

    import logging

    import torch

    from server.settings import EMBEDDED_CLIP, EMBEDDED_PIPELINE, Settings
    from tests.stack import a_redis, running_stack
    from worker.generation import GenerationRequest, Generator
    from worker.ranking import ClipRanker, rank

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="daikon-bench-"))
    if args.threads:
        torch.set_num_threads(args.threads)
    sd, clip = Path(EMBEDDED_PIPELINE), Path(EMBEDDED_CLIP)  # the default models
    body = {
        "prompt": "a red circle above a blue square",
        "width": args.size,
        "height": args.size,
        "steps": args.steps,
        "candidates": args.candidates,
        "top_k": 1,
    }

    # --- direct ---------------------------------------------------------------------------
    gen = Generator.load(str(sd), device="cpu", dtype=torch.float32)
    ranker = ClipRanker.load(str(clip), device="cpu", dtype=torch.float32)

    def direct(seed: int) -> None:
        seeds = tuple(seed + i for i in range(args.candidates))
        req = GenerationRequest.of(
            body["prompt"],
            seeds,
            width=args.size,
            height=args.size,
            steps=args.steps,
            guidance_scale=7.5,
        )
        images = gen.generate([req])[0]
        best = rank(ranker.score(str(body["prompt"]), images))[0]
        images[best].save(io.BytesIO(), format="PNG")

    direct(0)  # warm-up, as the worker's preload is
    direct_s = []
    for n in range(args.jobs):
        t = time.perf_counter()
        direct(1000 + n)
        direct_s.append(time.perf_counter() - t)

    # --- through the service --------------------------------------------------------------
    with a_redis() as redis_url:
        settings = Settings(
            data_dir=tmp,
            redis_url=redis_url,
            queue="daikon-bench",
            model=str(sd),
            clip_model=str(clip),
            admin_key="dk_bench",
            torch_threads=args.threads,
        )
        service_s, inference_s = [], []
        with running_stack(settings, tmp) as stack:
            stack.wait(stack.submit(**body, seed=0)["id"], timeout=300)  # warm-up
            for n in range(args.jobs):
                t = time.perf_counter()
                job_id = stack.submit(**body, seed=1000 + n)["id"]
                while True:
                    job = stack.http.get(stack.url(f"/v1/jobs/{job_id}"), timeout=10).json()
                    if job["status"] in ("succeeded", "failed", "canceled"):
                        break
                    time.sleep(0.05)
                service_s.append(time.perf_counter() - t)
                assert job["status"] == "succeeded", job["error"]
                inference_s.append(job["metrics"]["inference_seconds"])
            # Throughput with the queue full: all submitted at once.
            t = time.perf_counter()
            ids = [stack.submit(**body, seed=2000 + n)["id"] for n in range(args.jobs)]
            for job_id in ids:
                stack.wait(job_id, timeout=600)
            burst = time.perf_counter() - t

    d, s = statistics.median(direct_s), statistics.median(service_s)
    print(f"params: {body}, {args.jobs} jobs, torch threads {torch.get_num_threads()}")
    print(f"direct call            median {d:.3f} s/job")
    inference = statistics.median(inference_s)
    print(f"through the service    median {s:.3f} s/job  (worker inference {inference:.3f} s)")
    print(f"service / direct       {s / d:.2f}x  (overhead {s - d:+.3f} s/job)")
    print(
        f"burst of {args.jobs} queued at once: {burst / args.jobs:.3f} s/job "
        f"({burst / args.jobs / d:.2f}x direct)"
    )


if __name__ == "__main__":
    main()
