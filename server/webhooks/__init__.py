"""Webhook pieces the API, the job worker and the webhook worker share: task names, the retry
schedule's shape, signing (signing.py) and destination safety (safety.py, checked by the API
at submit and by the worker at delivery). Sending and retry decisions are the webhook worker's
(worker/webhooks/); records are db/deliveries.py's. Nothing here touches the database."""

from __future__ import annotations

TASK_DELIVER = "daikon.deliver_webhook"
TASK_PROGRESS = "daikon.webhook_progress"

# Seconds before attempt 1, 2, ... 8: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
# 10 h. The retries span 27.6 h; jitter (worker/webhooks/retry_schedule.py) only ever adds.
SCHEDULE: tuple[int, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
MAX_ATTEMPTS = len(SCHEDULE)
