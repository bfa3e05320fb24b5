"""Webhook events raised by the job executor: started, succeeded and failed are recorded in the
transaction that changes the job (the outbox), then published; progress is throttled and
fire-once, published without touching the database from the denoising loop."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session

from daikon.contract import WebhookEvent
from db import deliveries, jobs
from db.deliveries import Outbox
from db.models import Job, utcnow

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 0.5  # at most one job.progress event per job this often

ProgressPublish = Callable[[str, int, int, str], None]  # job id, step, total, ISO time
StepHook = Callable[[int, int], None]


@dataclass(frozen=True)
class JobWebhooks:
    outbox: Outbox
    publish_progress: ProgressPublish
    clock: Callable[[], float] = time.monotonic

    def record(self, session: Session, job_id: str, event: WebhookEvent) -> list[str]:
        """Inside the state change's transaction, with the job as it now stands."""
        return self.outbox.record(session, jobs.get(session=session, job_id=job_id), event)

    def send(self, delivery_ids: list[str]) -> None:
        self.outbox.send(delivery_ids)

    def progress_hook(self, job: Job) -> StepHook | None:
        """A per-job step callback sending job.progress at most every 0.5 s, or None when the
        job did not subscribe."""
        if not deliveries.wants(job, WebhookEvent.progress):
            return None
        job_id = job.id
        last = -math.inf

        def on_step(step: int, total: int) -> None:
            nonlocal last
            now = self.clock()
            if now - last < PROGRESS_INTERVAL_SECONDS:
                return
            last = now
            try:
                self.publish_progress(job_id, step, total, utcnow().isoformat())
            except Exception as e:  # progress events are best effort
                log.warning("job.progress for %s not published: %s", job_id, e)

        return on_step


class JobEvents(Protocol):
    """What the executor needs of webhooks (JobWebhooks, or none)."""

    def record(self, session: Session, job_id: str, event: WebhookEvent) -> list[str]: ...
    def send(self, delivery_ids: list[str]) -> None: ...
    def progress_hook(self, job: Job) -> StepHook | None: ...


class _NoWebhooks:
    """Webhooks off (in-process tests): nothing recorded, nothing sent."""

    def record(self, session: Session, job_id: str, event: WebhookEvent) -> list[str]:
        return []

    def send(self, delivery_ids: list[str]) -> None:
        pass

    def progress_hook(self, job: Job) -> StepHook | None:
        return None


NO_WEBHOOKS: JobEvents = _NoWebhooks()
