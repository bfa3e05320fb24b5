"""The webhook part of the wire contract: what a delivery's status means (resources.py shows
it) and what a delivery carries (payload.py). Signing, destination safety and the retry
schedule are the server's (server/webhooks/); sending is the webhook worker's
(worker/webhooks/)."""

from __future__ import annotations

import enum


class DeliveryStatus(enum.StrEnum):
    pending = "pending"  # waiting for its next attempt (or one is in flight)
    delivered = "delivered"  # a 2xx answer
    failed = "failed"  # attempts used up
    disabled = "disabled"  # the endpoint answered 410 Gone (now or earlier): not sent again
