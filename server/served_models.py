"""What a worker learned about a model when it loaded it, kept in Redis for the API.

A worker derives a model's capabilities from its pipeline (daikon/capabilities.py) and resolves
its limits for its device (daikon/limits.py) at load time, and writes them here, under the
model's queue name so deployments sharing a Redis stay apart. The record is kept after the
worker stops (no expiry): the last known facts of a model still hold while its workers
restart, so only a model that was never served is unknown. Workers serving one model are
expected to run it on the same kind of device (else set the limits explicitly in the model
table, and every worker resolves the same ones).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

import redis
from pydantic import BaseModel, ValidationError

from daikon.capabilities import ModelCapabilities
from daikon.limits import ModelLimits
from server import keys
from server.settings import Settings

log = logging.getLogger(__name__)
CACHE_SECONDS = 5.0


class ServedModel(BaseModel):
    model: str
    device: str
    limits: ModelLimits
    # What its pipeline can do (None from a worker of an older version).
    capabilities: ModelCapabilities | None = None
    loaded_at: datetime


def served_key(settings: Settings, model: str) -> str:
    return keys.served(settings.queue_for(model))


def publish(client: redis.Redis, settings: Settings, info: ServedModel) -> None:
    client.set(served_key(settings, info.model), info.model_dump_json())


def read(client: redis.Redis, settings: Settings, model: str) -> ServedModel | None:
    raw = client.get(served_key(settings, model))
    if raw is None:
        return None
    try:
        return ServedModel.model_validate_json(raw)  # type: ignore[arg-type]
    except ValidationError:  # written by another version: as good as unknown
        return None


class ServedModels:
    """The API's view, read from Redis at most every CACHE_SECONDS per model and process
    (a submission must not pay a round trip for facts that change when a worker restarts)."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.client, self.settings = client, settings
        self._cache: dict[str, tuple[float, ServedModel | None]] = {}
        self._lock = threading.Lock()

    def get(self, model: str) -> ServedModel | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(model)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        try:
            value = read(self.client, self.settings, model)
        except redis.RedisError as e:  # keep what was known; the worker checks again anyway
            log.warning("served-model facts for %s unavailable: %s", model, e)
            return hit[1] if hit is not None else None
        if value is not None:  # not published yet: asked again next time, so the facts
            with self._lock:  # show as soon as the first worker has loaded the model
                self._cache[model] = (now, value)
        return value
