"""The worker's heartbeat thread: writes its WorkerInfo (server/heartbeats.py) until stopped."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from server.heartbeats import HEARTBEAT_SECONDS, TTL_SECONDS, WorkerInfo, remove, write

log = logging.getLogger(__name__)


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
        failed: Callable[[], dict[str, str]] = dict,
        queue_of: Callable[[str], str] = str,
    ):
        self.client = client
        self.failed = failed  # model -> why it could not load here, asked at every beat
        self.queue_of = queue_of
        self.all_models, self.all_queues = list(models), list(queues)
        self.interval = interval
        self.ttl = ttl
        self.clock = clock
        started = clock()
        self.info = WorkerInfo(
            hostname=hostname,
            models=models,
            queues=queues,
            pid=os.getpid(),
            started_at=started,
            seen_at=started,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daikon-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def beat(self) -> None:
        """Advertise only the models this worker could load: a model whose load failed here
        is not served by it (its jobs would only fail with model_load_failed)."""
        failed = self.failed()
        broken = {self.queue_of(m) for m in failed}
        self.info = self.info.model_copy(
            update={
                "seen_at": self.clock(),
                "load_errors": {self.queue_of(m): why for m, why in failed.items()},
                "models": [m for m in self.all_models if m not in failed],
                "queues": [q for q in self.all_queues if q not in broken],
            }
        )
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
