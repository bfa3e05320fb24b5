"""Per-process caches that make a status poll cost about one indexed read.

Neither is ever the record of truth, and neither can serve what the database no longer says:

- `KeyCache`: who a Bearer key is, by the key's hash. Every entry is tagged with the Redis
  key generation read *before* the database lookup; every revocation replaces that generation
  (a random value, never reused) after its commit, so each API process drops its entries on
  its very next request. While Redis cannot be read, nothing is cached and the database
  answers every request. Whatever changes what a Principal carries (a key revoked, a tenant's
  limits, rows deleted by hand) calls api.auth.keys_changed after its commit.
- `BodyCache`: a job object's JSON bytes, tagged with what the row and Redis said when it was
  built (`updated_at`, progress step, queue position). Every write to a job row moves
  `updated_at` (db.models.Job's onupdate, and the explicit values of db/jobs.py), so a tag
  that still matches means the same body; entries also age out well before the signed or
  presigned image URLs they hold expire.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import redis

from daikon.live import PREFIX

log = logging.getLogger("daikon.api")
KEY_GENERATION = f"{PREFIX}:api-keys:generation"
V = TypeVar("V")


class _Lru(Generic[V]):
    """A bounded, thread-safe mapping with an age limit per entry."""

    def __init__(self, size: int, ttl_seconds: float):
        self.size, self.ttl = size, ttl_seconds
        self._items: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            if time.monotonic() - hit[0] > self.ttl:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return hit[1]

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._items[key] = (time.monotonic(), value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class KeyCache(Generic[V]):
    """Principals by key hash, valid while the key generation in Redis is unchanged."""

    def __init__(self, client: redis.Redis, *, size: int = 10_000, ttl_seconds: float = 60.0):
        self.client = client
        self._lru: _Lru[tuple[bytes, V]] = _Lru(size, ttl_seconds)

    def generation(self) -> bytes | None:
        """The current generation (one Redis GET), or None when Redis cannot say."""
        try:
            value = self.client.get(KEY_GENERATION)
            if value is None:  # never set, or Redis lost it: start a value never seen before
                self.client.set(KEY_GENERATION, uuid.uuid4().hex, nx=True)
        except redis.RedisError:
            return None
        return value if isinstance(value, bytes) else None

    def get(self, key_hash: str, generation: bytes | None) -> V | None:
        if generation is None:
            return None
        hit = self._lru.get(key_hash)
        return hit[1] if hit is not None and hit[0] == generation else None

    def peek(self, key_hash: str) -> V | None:
        """The entry whatever its generation: only for a caller that checks the key itself
        in the same read that serves the request (api/auth.py: authenticate_in_read)."""
        hit = self._lru.get(key_hash)
        return hit[1] if hit is not None else None

    def put(self, key_hash: str, generation: bytes | None, value: V) -> None:
        if generation is not None:
            self._lru.put(key_hash, (generation, value))

    def invalidate_everywhere(self) -> None:
        """After a revocation's commit: every process's entries stop matching."""
        self._lru.clear()
        self.client.set(KEY_GENERATION, uuid.uuid4().hex)  # never a value seen before


@dataclass(frozen=True)
class Finished:
    """A finished job's answer. Nothing writes a job row once it is terminal (every update in
    db/jobs.py is conditioned on an active status), so it holds until its URLs age."""

    tenant_id: str | None
    etag: str
    body: bytes


class BodyCache:
    """Serialised job objects by (job id, public base URL), valid while their tag matches;
    finished ones also without reading the row (`finished`)."""

    def __init__(self, *, size: int = 20_000, ttl_seconds: float = 30.0):
        self._lru: _Lru[tuple[Hashable, bytes]] = _Lru(size, ttl_seconds)
        self._finished: _Lru[Finished] = _Lru(size, ttl_seconds)

    def get(self, key: Hashable, tag: Hashable) -> bytes | None:
        hit = self._lru.get(key)
        return hit[1] if hit is not None and hit[0] == tag else None

    def put(self, key: Hashable, tag: Hashable, body: bytes) -> None:
        self._lru.put(key, (tag, body))

    def finished(self, key: Hashable) -> Finished | None:
        return self._finished.get(key)

    def put_finished(self, key: Hashable, value: Finished) -> None:
        self._finished.put(key, value)
