"""When the webhook worker tries a delivery again (SCHEDULE itself is in server.webhooks).
Pure functions of the attempt count, the answer and a random source, so tests check the exact
schedule without waiting for it."""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from daikon.webhooks import DeliveryStatus
from server.webhooks import MAX_ATTEMPTS, SCHEDULE

JITTER = 0.10
# A receiver's Retry-After is honoured up to this long; beyond it the next attempt is only
# postponed this much (a header cannot park an event for a year).
RETRY_AFTER_CAP_SECONDS = 24 * 3600
# Retry-After applies to these answers (throttling and maintenance).
RETRY_AFTER_STATUSES = frozenset({429, 503})


class Uniform(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


def next_delay(attempts_done: int, rng: Uniform) -> float:
    """Seconds from a failed attempt to the next one: the schedule's entry for attempt
    `attempts_done + 1`, spread later by up to JITTER so receivers that failed together are
    not retried together."""
    base = SCHEDULE[min(attempts_done, MAX_ATTEMPTS - 1)]
    return base * (1.0 + rng.uniform(0.0, JITTER))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from `now`: delta-seconds or an HTTP date; None if absent or
    unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if at.tzinfo is None:
        return None
    return max(0.0, (at - now).total_seconds())


@dataclass(frozen=True)
class Decision:
    status: DeliveryStatus
    delay: float | None  # seconds to the next attempt while pending


def decide(
    *,
    status_code: int | None,
    retry_after: float | None,
    attempts_done: int,
    max_attempts: int,
    rng: Uniform,
) -> Decision:
    """2xx delivers; 410 disables the endpoint; anything else (3xx included, and any network
    error) is retried on the schedule until the attempts are used up."""
    if status_code is not None and 200 <= status_code < 300:
        return Decision(DeliveryStatus.delivered, None)
    if status_code == 410:
        return Decision(DeliveryStatus.disabled, None)
    if attempts_done >= max_attempts:
        return Decision(DeliveryStatus.failed, None)
    delay = next_delay(attempts_done, rng)
    if status_code in RETRY_AFTER_STATUSES and retry_after is not None:
        delay = max(delay, min(math.ceil(retry_after), RETRY_AFTER_CAP_SECONDS))
    return Decision(DeliveryStatus.pending, delay)
