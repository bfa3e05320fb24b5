"""Per-process caches that make a status poll cost about one indexed read.

None is ever the record of truth, and none can serve what the database no longer says
(`QueuePlaces`, below, says how old a deep queue's positions may be):

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

import dataclasses
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import redis
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from daikon.contract import DEEP_QUEUE, QUEUE_RANKING_MAX_AGE_SECONDS, JobStatus
from db import jobs
from db.jobs import PollState
from server import keys

log = logging.getLogger("daikon.api")
KEY_GENERATION = keys.API_KEYS_GENERATION
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


class QueuePlaces:
    """Queue positions for polls whose cost does not grow with the queue.

    A job's position is a count of the queued jobs of its model that run before it: an index
    range scan, O(jobs ahead), about 2.5 ms a poll on PostgreSQL behind 10,000. Below
    `deep` jobs ahead the poll keeps counting (exact, and cheap). Once a poll of a model's job
    counts `deep` or more, later polls of that model's jobs read their place from one ranking
    of the whole queue, taken by this process at most `max_age` seconds ago (one pass for all
    polls in that interval, about 11 ms at 10,000 queued); a job that joined after the ranking
    is counted. So deep in a queue a position may be up to `max_age` old, about what a client
    polling at that interval sees anyway; the status and everything else stay read per poll.
    A submission to a deep queue is placed from the same ranking (`ahead_of_new`). When a
    ranking finds the queue under half of `deep`, counting resumes."""

    def __init__(
        self,
        *,
        deep: int = DEEP_QUEUE,
        max_age: float = QUEUE_RANKING_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.deep, self.max_age, self.clock = deep, max_age, clock
        # Jobs whose count reached `deep`, by model: a poll of one takes the model's first
        # ranking (the others' places come from that ranking).
        self._model_of: _Lru[str] = _Lru(100_000, ttl_seconds=3600.0)
        self._deep: set[str] = set()
        self._rankings: dict[str, tuple[float, jobs.QueueRanking]] = {}
        self._lock = threading.Lock()

    def counts(self, job_id: str) -> bool:
        """Whether a poll of `job_id` should count its place (not a job of a deep queue)."""
        if not self._deep:  # the usual case: no queue this deep, nothing to look up
            return True
        model = self._model_of.get(job_id)
        if model is not None:
            return model not in self._deep
        # Not counted deep here: a deep queue's last ranking may hold it all the same.
        return not any(job_id in ranked.ahead for ranked in self._deep_rankings())

    def _deep_rankings(self) -> list[jobs.QueueRanking]:
        return [hit[1] for m in list(self._deep) if (hit := self._rankings.get(m)) is not None]

    def placed(self, conn: Connection, state: PollState, *, counted: bool) -> PollState:
        """`state` with its queue position: the count it was read with (`counted`; learning
        from it whether the queue is deep), else its place in the shared ranking."""
        if not counted:
            return self._place(conn, state)
        if state.queue_position is not None and state.queue_position >= self.deep:
            self._model_of.put(state.id, state.model)
            self._deep.add(state.model)
        return state

    def deep_models(self) -> frozenset[str]:
        """The models whose queues are placed from a ranking now."""
        return frozenset(self._deep)

    def learn(self, model: str, position: int) -> None:
        """A count of `position` jobs ahead in `model`'s queue (a submission's, say)."""
        if position >= self.deep:
            self._deep.add(model)

    def ahead_of_new(
        self,
        session: Session | Connection,
        job_id: str,
        model: str,
        priority: int,
        turn: int | None = None,
    ) -> int | None:
        """The place of job `job_id`, just created in `session` for `model` at `priority`
        (and `turn`, db/jobs.py's RUN_ORDER), from the ranking, or None when the queue is not
        deep (count it). A ranking taken before the job holds neither it nor what others
        submitted since: as old as a deep poll's place, no older."""
        if model not in self._deep:
            return None
        ranking = self._ranking(session, model)
        ahead = ranking.ahead.get(job_id)  # a ranking taken just now, in its transaction
        return ahead if ahead is not None else ranking.ahead_of_new(priority, turn)

    def _place(self, conn: Connection, state: PollState) -> PollState:
        """`state` (read without its position) with its place in its model's queue."""
        if state.status is not JobStatus.queued:
            return state
        ahead = self._ranking(conn, state.model).ahead.get(state.id)
        if ahead is None:  # joined since the ranking (or just left the queue): count it
            ahead = jobs.queue_positions(session=conn, job_ids=[state.id]).get(state.id, 0)
        return dataclasses.replace(state, queue_position=ahead)

    def _ranking(self, conn: Session | Connection, model: str) -> jobs.QueueRanking:
        hit = self._rankings.get(model)
        if hit is not None and self.clock() - hit[0] <= self.max_age:
            return hit[1]
        with self._lock:  # one ranking at a time in this process, whatever the threads
            hit = self._rankings.get(model)
            if hit is not None and self.clock() - hit[0] <= self.max_age:
                return hit[1]
            taken = self.clock()
            ranking = jobs.queue_ranking(session=conn, model=model)
            self._rankings[model] = (taken, ranking)
            if len(ranking.ahead) < self.deep // 2:
                self._deep.discard(model)
                self._rankings.pop(model, None)
            return ranking
