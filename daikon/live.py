"""Fast, disposable job state in Redis, shared by API and worker.

The database stays the record of truth (status, results); Redis carries what changes every
denoising step and may be lost without harm: progress, cancel requests, change notifications,
rate-limit counters. Nothing here is ever the only copy of a job's state.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable

import redis

log = logging.getLogger(__name__)
PREFIX = "daikon"
TTL_SECONDS = 24 * 3600


def progress_key(job_id: str) -> str:
    return f"{PREFIX}:progress:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"{PREFIX}:cancel:{job_id}"


def channel(job_id: str) -> str:
    """Pub/sub channel announcing that a job changed (status or progress)."""
    return f"{PREFIX}:job:{job_id}"


@functools.cache
def client(url: str) -> redis.Redis:
    """One pooled client per URL and process (thread-safe)."""
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)


class LiveState:
    def __init__(self, url: str):
        self.url = url
        self.redis = client(url)

    # --- progress -------------------------------------------------------------------------
    def step(self, job_id: str, step: int, total: int, attempt: int) -> bool:
        """Record a finished step and announce it; True if the job's cancel was requested.
        One round trip: this runs once per denoising step."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(progress_key(job_id), mapping={"step": step, "total": total, "attempt": attempt})
        pipe.expire(progress_key(job_id), TTL_SECONDS)
        pipe.publish(channel(job_id), "progress")
        pipe.exists(cancel_key(job_id))
        return bool(pipe.execute()[-1])

    def progress(self, job_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
        """Steps done per running job; empty (not an error) while Redis is unreachable, since
        a job's record of truth is the database."""
        ids = list(job_ids)
        if not ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(progress_key(job_id), "step", "total")
        try:
            rows = pipe.execute()
        except redis.RedisError as e:
            log.warning("progress unavailable: %s", e)
            return {}
        out: dict[str, tuple[int, int]] = {}
        for job_id, (step, total) in zip(ids, rows, strict=True):
            if step is not None and total is not None:
                out[job_id] = (int(step), int(total))
        return out

    # --- cancel and change notifications ----------------------------------------------------
    def request_cancel(self, job_id: str) -> None:
        self.redis.set(cancel_key(job_id), 1, ex=TTL_SECONDS)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(cancel_key(job_id)))

    def announce(self, job_id: str, what: str = "status") -> None:
        self.redis.publish(channel(job_id), what)

    # --- limits ---------------------------------------------------------------------------
    def hit_rate_limit(self, tenant_id: str, per_minute: int) -> int | None:
        """Count one submission; None if allowed, else seconds until the window resets."""
        now = time.time()
        window = int(now // 60)
        key = f"{PREFIX}:rate:{tenant_id}:{window}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 120)
        count = int(pipe.execute()[0])
        if count <= per_minute:
            return None
        return max(1, int((window + 1) * 60 - now) + 1)
