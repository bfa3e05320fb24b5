"""The per-tenant submission rate limit (DAIKON_TENANT_SUBMITS_PER_MINUTE): a fixed one-minute
window counted in Redis, so every API process counts together."""

from __future__ import annotations

import time

import redis

from server import keys


class SubmitRateLimit:
    def __init__(self, client: redis.Redis, per_minute: int):
        self.client, self.per_minute = client, per_minute

    def hit(self, tenant_id: str, per_minute: int | None = None) -> int | None:
        """Count one submission; None if allowed, else seconds until the window resets.
        `per_minute` is the tenant's own limit, if it has one."""
        now = time.time()
        window = int(now // 60)
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(self._key(tenant_id, window))
        pipe.expire(self._key(tenant_id, window), 120)
        return self._wait(int(pipe.execute()[0]), per_minute, now)

    def exceeded(self, tenant_id: str, per_minute: int | None = None) -> int | None:
        """Whether one more submission now would be refused (seconds to wait), counting none."""
        now = time.time()
        count = int(self.client.get(self._key(tenant_id, int(now // 60))) or 0)
        return self._wait(count + 1, per_minute, now)

    @staticmethod
    def _key(tenant_id: str, window: int) -> str:
        return keys.rate(tenant_id, window)

    def _wait(self, count: int, per_minute: int | None, now: float) -> int | None:
        if count <= (per_minute if per_minute is not None else self.per_minute):
            return None
        return max(1, int((int(now // 60) + 1) * 60 - now) + 1)
