"""Per-process slots for requests that hold a server thread for long: event streams and the
OpenAI-compatible route's wait. One shared cap (DAIKON_MAX_LONG_REQUESTS), kept below the
server's threads (gunicorn.conf.py), so long requests can never take every thread and starve
ordinary ones; past it the answer is a clean 503."""

from __future__ import annotations

import threading

from daikon.errors import ServiceUnavailable

_held = 0
_lock = threading.Lock()


def acquire(limit: int, *, code: str, message: str) -> None:
    """Take a slot or raise 503 `code`; the caller must `release()` exactly once."""
    global _held
    with _lock:
        if _held >= limit:
            raise ServiceUnavailable(message, code=code)
        _held += 1


def release() -> None:
    global _held
    with _lock:
        _held -= 1


def held() -> int:
    return _held
