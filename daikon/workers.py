"""Worker heartbeats in Redis: which workers are alive and which model queues each consumes.

A worker's main process rewrites `daikon:worker:<hostname>` every HEARTBEAT_SECONDS with a TTL
of TTL_SECONDS, so a worker that dies without a word drops out within TTL_SECONDS, and a clean
shutdown deletes its key at once. A sorted set indexes the hostnames so readers (the API's
/v1/models, /readyz and /metrics) need no SCAN over the whole keyspace.

Several deployments may share one Redis: a worker counts for a deployment only if it consumes
one of that deployment's queues (`Settings.queue_for`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import redis
from pydantic import BaseModel, ValidationError

from daikon.live import PREFIX
from daikon.settings import Settings

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 10.0
TTL_SECONDS = 30
INDEX_KEY = f"{PREFIX}:workers"  # sorted set: hostname -> time of its last heartbeat


def worker_key(hostname: str) -> str:
    return f"{PREFIX}:worker:{hostname}"


class WorkerInfo(BaseModel):
    """The heartbeat's JSON value."""

    hostname: str
    models: list[str]
    queues: list[str]
    pid: int
    started_at: datetime
    seen_at: datetime


def write(client: redis.Redis, info: WorkerInfo, *, ttl: int = TTL_SECONDS) -> None:
    """One round trip; MULTI so the key and its index entry never disagree."""
    pipe = client.pipeline(transaction=True)
    pipe.set(worker_key(info.hostname), info.model_dump_json(), ex=ttl)
    pipe.zadd(INDEX_KEY, {info.hostname: info.seen_at.timestamp()})
    pipe.execute()


def remove(client: redis.Redis, hostname: str) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.delete(worker_key(hostname))
    pipe.zrem(INDEX_KEY, hostname)
    pipe.execute()


def live_workers(client: redis.Redis) -> list[WorkerInfo]:
    """Every worker whose heartbeat has not expired, in any deployment on this Redis."""
    raw: list[bytes] = client.zrange(INDEX_KEY, 0, -1)  # type: ignore[assignment]
    names = [n.decode() for n in raw]
    if not names:
        return []
    values = client.mget([worker_key(n) for n in names])
    gone = [n for n, v in zip(names, values, strict=True) if v is None]
    if gone:
        # Expired without a goodbye (killed, or lost its Redis for TTL_SECONDS). Should it come
        # back at this very moment, its next heartbeat re-adds it.
        client.zrem(INDEX_KEY, *gone)
    out: list[WorkerInfo] = []
    for value in values:
        if value is None:
            continue
        try:
            out.append(WorkerInfo.model_validate_json(value))
        except ValidationError as e:
            log.warning("ignoring an unreadable worker heartbeat: %s", e)
    return out


def serving(settings: Settings, workers: Iterable[WorkerInfo]) -> dict[str, int]:
    """Live workers per model of this deployment: those consuming the model's queue."""
    workers = list(workers)
    return {
        model: sum(settings.queue_for(model) in w.queues for w in workers)
        for model in settings.model_specs
    }


def for_deployment(settings: Settings, workers: Iterable[WorkerInfo]) -> list[WorkerInfo]:
    """The workers that consume at least one of this deployment's model queues."""
    queues = {settings.queue_for(m) for m in settings.model_specs}
    return [w for w in workers if queues.intersection(w.queues)]


def _now() -> datetime:
    return datetime.now(UTC)


class Heartbeat:
    """Writes one worker's heartbeat from a daemon thread until `stop()`, which also deletes
    it so the worker disappears from listings at once rather than after the TTL."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        hostname: str,
        models: list[str],
        queues: list[str],
        interval: float = HEARTBEAT_SECONDS,
        ttl: int = TTL_SECONDS,
        clock: Callable[[], datetime] = _now,
    ):
        self.client = client
        self.interval = interval
        self.ttl = ttl
        self.clock = clock
        started = clock()
        self.info = WorkerInfo(hostname=hostname, models=models, queues=queues, pid=os.getpid(),
                               started_at=started, seen_at=started)  # fmt: skip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daikon-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def beat(self) -> None:
        self.info = self.info.model_copy(update={"seen_at": self.clock()})
        write(self.client, self.info, ttl=self.ttl)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception as e:  # Redis away: keep trying; the TTL tells readers meanwhile
                log.warning("worker heartbeat not written: %s", e)
            self._stop.wait(self.interval)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            # Joined first: a beat still in flight must not land after the delete.
            self._thread.join(timeout)
        try:
            remove(self.client, self.info.hostname)
        except Exception as e:  # the key expires on its own
            log.warning("worker heartbeat not removed: %s", e)
