"""Webhook pieces shared by the API and the workers: task names, signing, the retry schedule,
destination safety and the pinned HTTP client. Nothing here touches the database."""

from __future__ import annotations

import enum

TASK_DELIVER = "daikon.deliver_webhook"
TASK_PROGRESS = "daikon.webhook_progress"


class DeliveryStatus(enum.StrEnum):
    pending = "pending"  # waiting for its next attempt (or one is in flight)
    delivered = "delivered"  # a 2xx answer
    failed = "failed"  # attempts used up
    disabled = "disabled"  # the endpoint answered 410 Gone (now or earlier): not sent again
