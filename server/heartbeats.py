"""Worker heartbeats in Redis: which workers are alive and which model queues each consumes.

A worker's main process (worker/heartbeat.py) rewrites `daikon:worker:<hostname>` every
HEARTBEAT_SECONDS with a TTL of TTL_SECONDS, so a worker that dies without a word drops out
within TTL_SECONDS, and a clean shutdown deletes its key at once. A sorted set indexes the
hostnames so readers (the API's /v1/models, /readyz and /metrics) need no SCAN over the whole
keyspace.

Several deployments may share one Redis: a worker counts for a deployment only if it consumes
one of that deployment's queues (`Settings.queue_for`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

import redis
from pydantic import BaseModel, ValidationError

from server import keys
from server.settings import Settings

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 10.0
TTL_SECONDS = 30
INDEX_KEY = keys.WORKERS


def worker_key(hostname: str) -> str:
    return keys.worker(hostname)


class WorkerInfo(BaseModel):
    """The heartbeat's JSON value."""

    hostname: str
    models: list[str]
    queues: list[str]
    pid: int
    started_at: datetime
    seen_at: datetime
    # Models it was told to serve but could not load, by their queue (which names the
    # deployment too): left out of `models` and `queues`, with the reason, for operators.
    load_errors: dict[str, str] = {}


def load_key(settings: Settings, model: str) -> str:
    """Per model: each worker's last load of it (hash field: its hostname)."""
    return keys.model_load(settings.queue_for(model))


def record_load(
    client: redis.Redis, settings: Settings, *, model: str, hostname: str, error: str | None
) -> None:
    """Written by the process that loaded (or failed to load) the model; read by its
    worker's heartbeat."""
    if error is None:
        client.hdel(load_key(settings, model), hostname)
    else:
        client.hset(load_key(settings, model), hostname, error[:1000])


def load_errors(
    client: redis.Redis, settings: Settings, *, hostname: str, models: Iterable[str]
) -> dict[str, str]:
    models = list(models)
    pipe = client.pipeline(transaction=False)
    for model in models:
        pipe.hget(load_key(settings, model), hostname)
    return {m: e.decode() for m, e in zip(models, pipe.execute(), strict=True) if e is not None}


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
