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

from server import heartbeats, keys, stage_metrics
from server.heartbeats import WorkerInfo
from server.stage_metrics import StageHistogram

log = logging.getLogger(__name__)
TTL_SECONDS = 24 * 3600


@functools.cache
def client(url: str) -> redis.Redis:
    """One pooled client per URL and process (thread-safe)."""
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)


class JobWatch:
    """Notices that one job changed, for a waiting request (an event stream, the OpenAI
    route's wait). Subscribe (enter) before reading the job, so a change between the read and
    the wait is not missed. Redis is never the record of truth: while it is unreachable a wait
    just lasts its whole time, and the caller's next read of the database moves on."""

    def __init__(self, client: redis.Redis, job_id: str):
        self.job_id = job_id
        self._pubsub: redis.client.PubSub | None = client.pubsub(ignore_subscribe_messages=True)
        # Whether the notice the last wait returned for was a change of status (not a step).
        self.status_changed = False

    def __enter__(self) -> JobWatch:
        try:
            assert self._pubsub is not None
            self._pubsub.subscribe(keys.job_channel(self.job_id))
        except redis.RedisError as e:
            self._lost(e)
        return self

    def __exit__(self, *_: object) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None

    def _lost(self, e: Exception) -> None:
        log.warning("no change notices for job %s, re-reading only: %s", self.job_id, e)
        self.__exit__()

    def wait(self, seconds: float, *, status_only: bool = False) -> bool:
        """Block until a notice (with `status_only`, one that is not a per-step progress
        notice) or until `seconds` pass; True if a notice came."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            if self._pubsub is None:
                time.sleep(left)
                return False
            try:
                message = self._pubsub.get_message(timeout=min(left, 1.0))
            except redis.RedisError as e:
                self._lost(e)
                continue
            if message is not None and not (status_only and message.get("data") == b"progress"):
                self.status_changed = message.get("data") != b"progress"
                return True
        return False


class LiveState:
    def __init__(self, url: str, namespace: str = ""):
        self.url = url
        self.redis = client(url)
        self.namespace = namespace  # the deployment's queue name: stage timings live under it

    # --- progress -------------------------------------------------------------------------
    def step(self, job_id: str, step: int, total: int, attempt: int) -> bool:
        """Record a finished step and announce it; True if the job's cancel was requested.
        One round trip: this runs once per denoising step."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.progress(job_id), mapping={"step": step, "total": total, "attempt": attempt})
        pipe.expire(keys.progress(job_id), TTL_SECONDS)
        pipe.publish(keys.job_channel(job_id), "progress")
        pipe.exists(keys.cancel(job_id))
        return bool(pipe.execute()[-1])

    def progress(self, job_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
        """Steps done per running job; empty (not an error) while Redis is unreachable, since
        a job's record of truth is the database."""
        ids = list(job_ids)
        if not ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(keys.progress(job_id), "step", "total")
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
        self.redis.set(keys.cancel(job_id), 1, ex=TTL_SECONDS)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(keys.cancel(job_id)))

    def announce(self, job_id: str, what: str = "status") -> None:
        self.redis.publish(keys.job_channel(job_id), what)

    def watch(self, job_id: str) -> JobWatch:
        """Notices of the job's changes, as a context manager (see JobWatch)."""
        return JobWatch(self.redis, job_id)

    # --- what operators read --------------------------------------------------------------
    def record_stages(self, *metrics: dict[str, float]) -> None:
        """Finished jobs' stage timings, for /metrics (server/stage_metrics.py), in one round
        trip however many."""

        stage_metrics.record(self.redis, self.namespace, *metrics)

    def stage_histograms(self) -> dict[str, StageHistogram]:

        return stage_metrics.read(self.redis, self.namespace)

    def record_reused(self, model: str) -> None:
        """A job answered with an earlier one's images, counted for /metrics."""
        self.redis.hincrby(keys.reused_jobs(self.namespace), model, 1)

    def reused_jobs(self) -> dict[str, int]:
        """Reused jobs by model, as counted so far (a counter: Redis losing it resets it)."""
        raw: dict[bytes, bytes] = self.redis.hgetall(keys.reused_jobs(self.namespace))  # type: ignore[assignment]
        return {k.decode(): int(v) for k, v in raw.items()}

    def live_workers(self) -> list[WorkerInfo]:
        """Every worker with a live heartbeat (server/heartbeats.py)."""

        return heartbeats.live_workers(self.redis)

    def list_lengths(self, names: list[str]) -> list[int]:
        """Lengths of broker lists (queue depths), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)
        return [int(n) for n in pipe.execute()]
