"""Jobs per second through the whole service, batched and not, against the pipeline called
directly: issue 14's benchmarks 1, 2, 3, 5 and 5b, measured side by side in one run.

1. A burst of N compatible jobs through the service (HTTP, Redis, Celery, SQL, storage)
   against the same images made directly in this process at the pipeline's best batch size.
2. The same burst with cross-job batching on and off (DAIKON_BATCH_JOBS), and one job alone.
3. Idle latency: one job at a time on an idle service, client-observed time minus the
   worker's inference time, p50 and p95.
5. CLIP ranking's share of a job's time at the default candidate count.
5b. Trivial jobs (1 step, 1 candidate) queued at once, drained by one worker process.

    .venv/bin/python bench/throughput.py [--burst 16] [--idle 20] [--trivial 400]
        [--plot docs/benchmarks-batch.png]

Prints ratios; docs/benchmarks.md records a run with the machine named.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TERMINAL = ("succeeded", "failed", "canceled")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def direct_rates(
    size: int, steps: int, batches: list[int], rounds: int, threads: int = 0
) -> dict[int, float]:
    """Images per second of generate + rank + PNG called in this process, per batch size."""
    import torch

    if threads:
        torch.set_num_threads(threads)

    from server.settings import EMBEDDED_CLIP, EMBEDDED_PIPELINE
    from worker.generation import GenerationRequest, Generator
    from worker.ranking import ClipRanker

    gen = Generator.load(EMBEDDED_PIPELINE, device="cpu", dtype=torch.float32)
    ranker = ClipRanker.load(EMBEDDED_CLIP, device="cpu", dtype=torch.float32)
    prompt = "a red circle above a blue square"

    def run(n: int, seed: int) -> None:
        reqs = [
            GenerationRequest.of(
                f"{prompt} {i}",
                (seed + i,),
                width=size,
                height=size,
                steps=steps,
                guidance_scale=7.5,
            )
            for i in range(n)
        ]
        for req, images in zip(reqs, gen.generate(reqs), strict=True):
            ranker.score(req.params.prompt, images)
            images[0].save(io.BytesIO(), format="PNG")

    run(1, 0)  # warm-up, as the worker's preload is
    rates = {}
    for n in batches:
        t = time.perf_counter()
        for r in range(rounds):
            run(n, 1000 * r)
        rates[n] = n * rounds / (time.perf_counter() - t)
    return rates


@contextmanager
def stack(
    tmp: Path, redis_url: str, *, batch: bool, threads: int = 0, images_per_call: int | None = None
) -> Iterator[Any]:
    """A whole service on `redis_url`; `images_per_call` as the deployment would set it for
    this model (empty: the CPU default)."""
    from server.settings import EMBEDDED_CLIP, EMBEDDED_PIPELINE, Settings
    from tests.stack import running_stack

    queue = f"daikon-bench-{'batched' if batch else 'single'}-{os.getpid()}"
    settings = Settings(
        data_dir=tmp / queue,
        redis_url=redis_url,
        queue=queue,
        model=EMBEDDED_PIPELINE,
        clip_model=EMBEDDED_CLIP,
        admin_key="dk_bench",
        batch_jobs=batch,
        tenant_max_active_jobs=100_000,
        tenant_submits_per_minute=100_000,
        torch_threads=threads,
        images_per_call=images_per_call,
    )
    with running_stack(settings, tmp) as s:
        s.wait(s.submit(prompt="warm-up", steps=2, candidates=1)["id"], timeout=300)
        yield s


def drain(s: Any, bodies: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """Submit every body at once, wait for all; seconds from first submit to last finish."""
    t = time.perf_counter()
    ids = [s.submit(**b)["id"] for b in bodies]
    jobs = [s.wait(i, timeout=1800) for i in ids]
    elapsed = time.perf_counter() - t
    bad = [j for j in jobs if j["status"] != "succeeded"]
    assert not bad, bad[0]
    return elapsed, jobs


def idle_latency(s: Any, body: dict[str, Any], n: int) -> list[float]:
    """Client-observed seconds minus inference, one job at a time, polled every 5 ms."""
    overhead = []
    for i in range(n):
        t = time.perf_counter()
        job_id = s.submit(**body, seed=5000 + i)["id"]
        while True:
            job = s.get(job_id)
            if job["status"] in TERMINAL:
                break
            time.sleep(0.005)
        overhead.append(time.perf_counter() - t - job["metrics"]["inference_seconds"])
    return overhead


def plot(rates: dict[int, float], service: dict[str, float], path: Path) -> None:
    """Images per second against batch size (direct), with the service's bursts beside."""
    from PIL import Image, ImageDraw

    bars = [(f"direct x{n}", v) for n, v in rates.items()] + list(service.items())
    w, h, pad = 120 * len(bars) + 80, 360, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    top = max(v for _, v in bars) * 1.15
    d.text((pad, 8), "images per second (shapes model, 32 px, 20 steps, CPU)", fill="black")
    d.line((pad, h - pad, w - 20, h - pad), fill="black")
    for i, (label, v) in enumerate(bars):
        x0 = pad + 20 + i * 120
        y0 = h - pad - int((h - 2 * pad - 20) * v / top)
        colour = "#4c78a8" if label.startswith("direct") else "#f58518"
        d.rectangle((x0, y0, x0 + 80, h - pad), fill=colour)
        d.text((x0, y0 - 14), f"{v:.1f}", fill="black")
        d.text((x0, h - pad + 6), label, fill="black")
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--burst",
        type=int,
        default=0,
        help="jobs in the burst (0 = four calls' worth at the service's images per call)",
    )
    ap.add_argument(
        "--images-per-call",
        type=int,
        default=0,
        help="the service's images per pipeline call "
        "(0 = the direct call's best batch size, measured first)",
    )
    ap.add_argument("--idle", type=int, default=20)
    ap.add_argument("--trivial", type=int, default=400)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=4, help="direct calls per batch size")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, direct and in the worker alike (0 = torch's default)",
    )
    ap.add_argument("--plot", type=Path, default=None, help="write the PNG plot here")
    args = ap.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    import torch

    from server.settings import Settings
    from tests.stack import a_redis

    DEFAULT_CANDIDATES = Settings().limits.default_candidates
    load_before = os.getloadavg()[0]  # a shared machine's other work, said with the figures
    with a_redis() as redis_url:
        tmp = Path(tempfile.mkdtemp(prefix="daikon-bench-"))
        body = {
            "prompt": "a red circle above a blue square",
            "width": args.size,
            "height": args.size,
            "steps": args.steps,
            "candidates": 1,
            "top_k": 1,
        }
        rates = direct_rates(args.size, args.steps, [1, 2, 4, 8, 16], args.rounds, args.threads)
        best_n, best = max(rates.items(), key=lambda kv: kv[1])
        # The service gets what the direct call is measured at: its best images per call.
        per_call = args.images_per_call or best_n
        args.burst = args.burst or 4 * per_call
        burst = [
            {**body, "prompt": f"{body['prompt']} {i}", "seed": 100 + i} for i in range(args.burst)
        ]
        results: dict[str, dict[str, Any]] = {}
        for batch in (True, False):
            name = "batched" if batch else "unbatched"
            with stack(
                tmp, redis_url, batch=batch, threads=args.threads, images_per_call=per_call
            ) as s:
                one, _ = drain(s, burst[:1])
                seconds, jobs = drain(s, burst)
                sizes = [int(j["metrics"].get("batch_size", 1)) for j in jobs]
                r: dict[str, Any] = {
                    "single_s": one,
                    "burst_rate": args.burst / seconds,
                    "batch_sizes": statistics.mean(sizes),
                }
                if batch:
                    r["idle"] = idle_latency(s, body, args.idle)
                    default = {**body, "candidates": DEFAULT_CANDIDATES, "top_k": 1}
                    _, ranked = drain(s, [{**default, "seed": 9000 + i} for i in range(4)])
                    r["clip_share"] = statistics.median(
                        j["metrics"]["ranking_seconds"] / j["metrics"]["total_seconds"]
                        for j in ranked
                    )
                    trivial = {**body, "steps": 1, "width": 32, "height": 32}
                    t_seconds, tjobs = s.drain_queued(
                        [{**trivial, "seed": i} for i in range(args.trivial)]
                    )
                    r["trivial_rate"] = args.trivial / t_seconds
                    # What the pipeline itself took, per job (batches share their call).
                    r["trivial_inference"] = statistics.mean(
                        j["metrics"]["inference_seconds"] / j["metrics"].get("batch_size", 1)
                        for j in tjobs
                    )
                results[name] = r

    b, u = results["batched"], results["unbatched"]
    print(
        f"load average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
        f"end, on {os.cpu_count()} cores"
    )
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}; shapes model {args.size} px, {args.steps} steps, "
        f"1 candidate per job; the service runs up to {per_call} images per call"
    )
    print("direct images/s by batch size: " + ", ".join(f"x{n} {v:.2f}" for n, v in rates.items()))
    print(
        f"1. burst of {args.burst}: service (batched) {b['burst_rate']:.2f} jobs/s vs direct "
        f"at its best (x{best_n}) {best:.2f} images/s = {b['burst_rate'] / best:.2f}x "
        "(target >= 0.9)"
    )
    print(
        f"2. batched {b['burst_rate']:.2f} vs unbatched {u['burst_rate']:.2f} jobs/s = "
        f"{b['burst_rate'] / u['burst_rate']:.2f}x (target >= 1.5; mean batch "
        f"{b['batch_sizes']:.1f}); one job alone: batched {b['single_s']:.3f} s, unbatched "
        f"{u['single_s']:.3f} s = {b['single_s'] / u['single_s']:.2f}x"
    )
    idle = b["idle"]
    print(
        f"3. idle overhead over {len(idle)} jobs: p50 {1000 * statistics.median(idle):.0f} ms, "
        f"p95 {1000 * percentile(idle, 0.95):.0f} ms (target p50 <= 50 ms)"
    )
    print(
        f"5. CLIP ranking share at {DEFAULT_CANDIDATES} candidates: "
        f"{100 * b['clip_share']:.1f}% (target <= 5%)"
    )
    per_job, inference = 1 / b["trivial_rate"], b["trivial_inference"]
    print(
        f"5b. {args.trivial} trivial jobs queued, drained by one worker process: "
        f"{b['trivial_rate']:.1f} jobs/s (target >= 100): {1000 * per_job:.1f} ms a job, of "
        f"which the pipeline {1000 * inference:.1f} ms and the service "
        f"{1000 * (per_job - inference):.1f} ms"
    )
    if args.plot:
        plot(
            rates,
            {"service batched": b["burst_rate"], "service single": u["burst_rate"]},
            args.plot,
        )
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
