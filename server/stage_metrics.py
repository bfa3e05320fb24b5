"""Histograms of job stage durations, kept in Redis so any API process can expose them.

Each worker adds a finished job's stage timings (the `metrics` on its row) here; the API's
/metrics collector reads them at scrape time. One hash per stage holds a count per bucket (not
cumulative: each job adds to exactly one bucket), plus `sum` and `count`. Keys carry the
deployment's queue name, as the broker's lists do, so deployments sharing a Redis stay apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from server import keys

STAGES = ("queue", "load", "inference", "ranking", "upload", "total")
BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, math.inf)


def le_label(bound: float) -> str:
    """Prometheus's spelling of a bucket bound: 0.05, 1.0, +Inf."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def stage_key(namespace: str, stage: str) -> str:
    return keys.stage_seconds(namespace, stage)


def record(client: redis.Redis, namespace: str, *jobs: Mapping[str, float]) -> None:
    """Add jobs' `<stage>_seconds` timings (a batch's, say): one round trip, applied all or
    nothing."""
    pipe = client.pipeline(transaction=True)
    for metrics in jobs:
        for name, value in metrics.items():
            stage = name.removesuffix("_seconds")
            if stage not in STAGES:
                continue
            seconds = max(0.0, float(value))  # queue time may dip below 0 with skewed clocks
            bound = next(b for b in BOUNDS if seconds <= b)
            key = stage_key(namespace, stage)
            pipe.hincrby(key, le_label(bound), 1)
            pipe.hincrby(key, "count", 1)
            pipe.hincrbyfloat(key, "sum", seconds)
    if len(pipe):
        pipe.execute()


@dataclass(frozen=True)
class StageHistogram:
    buckets: list[tuple[str, float]]  # cumulative, ending with +Inf (== the count)
    sum: float


def read(client: redis.Redis, namespace: str) -> dict[str, StageHistogram]:
    """Every stage, zeros included, so the series exist before the first job."""
    pipe = client.pipeline(transaction=False)
    for stage in STAGES:
        pipe.hgetall(stage_key(namespace, stage))
    out: dict[str, StageHistogram] = {}
    for stage, raw in zip(STAGES, pipe.execute(), strict=True):
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound in BOUNDS:
            running += int(fields.get(le_label(bound), 0))
            buckets.append((le_label(bound), float(running)))
        out[stage] = StageHistogram(buckets=buckets, sum=float(fields.get("sum", 0.0)))
    return out
