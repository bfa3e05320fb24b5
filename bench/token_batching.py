"""Does cross-job batching pay for token models? A burst of compatible `shapes-ar` jobs
through the whole service (HTTP, Redis, Celery, SQL, storage) with DAIKON_BATCH_JOBS on and
off, measured side by side in one run, and the same images drawn directly at one call per job
and at one call for all: the ratio the service can hope for.

Token jobs share calls when they share the model and the sampling (guidance, temperature,
top-p, top-k tokens): each row has its own seeded generator, so batching changes no byte.

    .venv/bin/python bench/token_batching.py [--burst 16] [--candidates 4]

Prints ratios; docs/benchmarks.md records a run with the machine named.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "a red circle above a blue square"


def direct(burst: int, candidates: int, per_call: int, rounds: int) -> tuple[float, float]:
    """Jobs per second drawn directly: one call per job, and the burst's jobs in calls of
    `per_call` rows (what a batching worker runs)."""
    from server.settings import EMBEDDED_TOKEN_PIPELINE
    from worker.generation import GenerationRequest
    from worker.runtime import load_generator

    generator = load_generator(EMBEDDED_TOKEN_PIPELINE, device="cpu", images_per_call=per_call)
    jobs = [
        GenerationRequest.of(f"{PROMPT} {i}", range(100 * i, 100 * i + candidates))
        for i in range(burst)
    ]
    generator.generate(jobs[:1])  # warm-up

    def rate(calls: list[list[GenerationRequest]]) -> float:
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            for call in calls:
                generator.generate(call)
            times.append(time.perf_counter() - t)
        return burst / statistics.median(times)

    return rate([[job] for job in jobs]), rate([jobs])


def service(burst: int, candidates: int, *, batch: bool, tmp: Path, redis_url: str) -> float:
    from server.settings import EMBEDDED_TOKEN_MODEL, Settings
    from tests.stack import running_stack

    queue = f"daikon-bench-tokens-{'batched' if batch else 'single'}-{os.getpid()}"
    settings = Settings(
        data_dir=tmp / queue,
        redis_url=redis_url,
        queue=queue,
        admin_key="dk_bench",
        batch_jobs=batch,
        tenant_max_active_jobs=100_000,
        tenant_submits_per_minute=100_000,
        worker_models=EMBEDDED_TOKEN_MODEL,
    )
    body = {"model": EMBEDDED_TOKEN_MODEL, "candidates": candidates, "top_k": 1}
    with running_stack(settings, tmp) as s:
        s.wait(s.submit(prompt="warm-up", **body)["id"], timeout=300)
        t = time.perf_counter()
        ids = [s.submit(prompt=f"{PROMPT} {i}", seed=100 * i, **body)["id"] for i in range(burst)]
        jobs = [s.wait(i, timeout=1800) for i in ids]
        elapsed = time.perf_counter() - t
    bad = [j for j in jobs if j["status"] != "succeeded"]
    assert not bad, bad[0]
    return burst / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--burst", type=int, default=16)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    from server.settings import EMBEDDED_TOKEN_LIMITS
    from tests.stack import a_redis

    per_call = EMBEDDED_TOKEN_LIMITS.images_per_call or args.candidates
    load_before = os.getloadavg()[0]
    alone, together = direct(args.burst, args.candidates, per_call, args.rounds)
    with a_redis() as redis_url:
        tmp = Path(tempfile.mkdtemp(prefix="daikon-bench-tokens-"))
        batched = service(args.burst, args.candidates, batch=True, tmp=tmp, redis_url=redis_url)
        unbatched = service(args.burst, args.candidates, batch=False, tmp=tmp, redis_url=redis_url)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}; load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"shapes-ar, {args.burst} jobs of {args.candidates} candidates, up to {per_call} rows "
        "per call"
    )
    print(
        f"direct: one call per job {alone:.2f} jobs/s, calls of {per_call} rows "
        f"{together:.2f} jobs/s = {together / alone:.2f}x"
    )
    print(
        f"service: batched {batched:.2f} vs unbatched {unbatched:.2f} jobs/s = "
        f"{batched / unbatched:.2f}x"
    )


if __name__ == "__main__":
    main()
