"""Per-process slots for requests that hold a server thread for long: event streams and the
OpenAI-compatible route's wait.

Two caps: one for all tenants (DAIKON_MAX_LONG_REQUESTS), kept below the server's threads
(gunicorn.conf.py) so long requests can never starve ordinary ones, and one per tenant
(DAIKON_MAX_LONG_REQUESTS_PER_TENANT), so one tenant can never take the slots that belong to
all. Past either the answer is a clean 503.

A slot is released exactly once, whatever happens to its request: the stream ends, the client
goes away before the first byte, the body is never iterated (HEAD), or an exception is raised
before streaming starts. Callers tie `Slot.release` to the response's close (which every WSGI
server calls) or use the slot as a context manager; releasing twice is a no-op.
"""

from __future__ import annotations

import threading
from collections import Counter

from daikon.errors import RequestErrorCode, ServiceUnavailable


class Slot:
    """One held slot. `release()` is idempotent and thread-safe."""

    def __init__(self, pool: LongRequests, tenant_id: str):
        self._pool = pool
        self._tenant_id = tenant_id
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._pool._give_back(self._tenant_id)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class LongRequests:
    def __init__(self, limit: int, per_tenant: int):
        self.limit = limit
        self.per_tenant = per_tenant
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, tenant_id: str, *, code: RequestErrorCode, what: str, instead: str) -> Slot:
        """Take a slot for `tenant_id` or raise 503 `code`. `what` names the requests in the
        message ("open event streams"), `instead` says what the client can do instead."""
        with self._lock:
            if self._held[tenant_id] >= self.per_tenant:
                raise ServiceUnavailable(
                    f"this tenant has {self.per_tenant} {what} on this server, its limit; "
                    f"{instead}",
                    code=code,
                )
            if self._held.total() >= self.limit:
                raise ServiceUnavailable(f"too many {what} on this server; {instead}", code=code)
            self._held[tenant_id] += 1
        return Slot(self, tenant_id)

    def _give_back(self, tenant_id: str) -> None:
        with self._lock:
            self._held[tenant_id] -= 1
            if self._held[tenant_id] <= 0:
                del self._held[tenant_id]

    def held(self, tenant_id: str | None = None) -> int:
        with self._lock:
            return self._held[tenant_id] if tenant_id is not None else self._held.total()
