"""The per-tenant submission rate limit (DAIKON_TENANT_SUBMITS_PER_MINUTE): a fixed one-minute
window counted in Redis, so every API process counts together."""

from __future__ import annotations

import time

import redis

from daikon.live import PREFIX


class SubmitRateLimit:
    def __init__(self, client: redis.Redis, per_minute: int):
        self.client, self.per_minute = client, per_minute

    def hit(self, tenant_id: str, per_minute: int | None = None) -> int | None:
        """Count one submission; None if allowed, else seconds until the window resets.
        `per_minute` is the tenant's own limit, if it has one."""
        now = time.time()
        window = int(now // 60)
        key = f"{PREFIX}:rate:{tenant_id}:{window}"
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 120)
        count = int(pipe.execute()[0])
        if count <= (per_minute if per_minute is not None else self.per_minute):
            return None
        return max(1, int((window + 1) * 60 - now) + 1)
