"""Delivering webhooks: one attempt per task, on the webhook queue, in the webhook worker
(`celery -A worker.webhooks.main worker`), never in a GPU worker.

The database holds the schedule. A task claims the due attempt with a conditional UPDATE,
passes the gates (worker/webhooks/gate.py: a slot of its endpoint and of its tenant, and a
circuit that is not open; otherwise the claim is handed back, the attempt unspent, and the
delivery comes back later while the thread takes the next message), signs, POSTs, records the
attempt and sets the next attempt's time. Retries due within
SHORT_DELAY are published as broker countdowns; later ones, and any message the broker lost,
are published by the dispatcher, which every few seconds looks for due deliveries with no
live message. The clock and the random source are injected, so tests drive a whole
27-hour schedule in milliseconds.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import shared_task
from sqlalchemy.orm import Session, sessionmaker

from daikon.contract import WebhookEvent
from daikon.webhooks import DeliveryStatus
from db import deliveries
from db.deliveries import Outbox
from db.models import WebhookDelivery, utcnow
from db.session import make_engine, make_session_factory, session_scope
from server import encryption, image_urls
from server.celery_config import make_celery
from server.encryption import Cipher
from server.job_view import EventRenderer, Links
from server.settings import Settings
from server.storage import make_store
from server.webhooks import SCHEDULE, TASK_DELIVER, TASK_PROGRESS, signing
from server.webhooks.safety import Allowlist, Resolver, system_resolver
from worker.webhooks import http as webhook_http
from worker.webhooks.gate import Endpoint, Gates, Outcome, Pass, Verdict
from worker.webhooks.retry_schedule import JITTER, Uniform, decide

log = logging.getLogger("daikon.webhooks")

# Retries due this soon ride a broker countdown (far below the visibility timeout).
SHORT_DELAY_SECONDS = 60.0
# A published message not acted on for this long is taken as lost and published again.
REQUEUE_AFTER = timedelta(minutes=2)
# An attempt holds its delivery for its timeout plus this; a worker that dies mid-attempt
# frees it when the lease runs out.
LEASE_MARGIN = timedelta(seconds=30)
# Each dispatcher tick publishes at most this many batches of due deliveries.
DISPATCH_BATCH = 200
DISPATCH_BATCHES = 25
# A delivery whose endpoint's circuit stays open this long after the event (the retry
# schedule's whole span, jitter included) is given up: it spends no attempts while it waits.
GIVE_UP_AFTER = timedelta(seconds=sum(SCHEDULE) * (1 + JITTER))

Publish = Callable[[str, float], None]  # (delivery id, countdown seconds)


@dataclass
class Deliverer:
    sessions: sessionmaker[Session]
    settings: Settings
    publish: Publish
    links: Links  # for job objects in progress events
    clock: Callable[[], datetime] = utcnow  # the schedule's clock
    wall: Callable[[], float] = time.time  # webhook-timestamp: when a request really goes out
    rng: Uniform = field(default_factory=random.SystemRandom)
    resolver: Resolver = system_resolver
    gates: Gates | None = None  # None: from the settings, on the settings' Redis
    allow: Allowlist = field(init=False)
    cipher: Cipher = field(init=False)

    def __post_init__(self) -> None:
        self.allow = Allowlist.parse(self.settings.webhook_allow_list)
        self.cipher = encryption.cipher(self.settings)
        if self.gates is None:
            self.gates = Gates.from_settings(self.settings)

    def deliver(self, delivery_id: str) -> DeliveryStatus | None:
        """Make the delivery's due attempt, if it is due, nobody else is making it, and the
        gates let it through; else put it back for later, its attempt unspent. None: nothing
        to do (not due, or another message is making the attempt)."""
        now = self.clock()
        lease = timedelta(seconds=self.settings.webhooks.webhook_timeout_seconds) + LEASE_MARGIN
        with session_scope(self.sessions) as session:
            d = deliveries.claim_attempt(
                session=session, delivery_id=delivery_id, now=now, lease=lease
            )
            if d is None:
                return None
            if deliveries.is_disabled(session=session, tenant_id=d.tenant_id, url=d.url):
                deliveries.mark_disabled(session=session, delivery_id=d.id, now=now)
                return DeliveryStatus.disabled
            keys = deliveries.signing_secrets(
                session=session, tenant_id=d.tenant_id, now=now, cipher=self.cipher
            )
            allow = deliveries.allowlist_for(
                session=session,
                tenant_id=d.tenant_id,
                allow=self.allow,
                trusted=self.settings.webhook_allow_tenant_names,
            )
        # Only the claim's holder asks the gates: a duplicate message never defers a
        # delivery another thread is sending.
        assert self.gates is not None
        endpoint = Endpoint.of(d.tenant_id, d.url)
        gate = self.gates.enter(endpoint, who=delivery_id, now=now.timestamp())
        if gate.verdict is not Verdict.go:
            return self._put_back(d, endpoint, gate, now)
        outcome = Outcome.unknown
        try:
            status, outcome = self._attempt(d, keys, allow, now)
            return status
        finally:
            state = self.gates.leave(endpoint, gate, outcome, now=self.clock().timestamp())
            if state.startswith("opened"):
                log.warning(
                    "webhook endpoint %s of tenant %s gave no answer: circuit %s%s",
                    endpoint.origin,
                    endpoint.tenant_id,
                    state,
                    " (its probe failed)" if gate.probe else "",
                )
            elif state == "closed" and gate.probe:
                log.info(
                    "webhook endpoint %s of tenant %s answered its probe: circuit closed",
                    endpoint.origin,
                    endpoint.tenant_id,
                )

    def _attempt(
        self, d: WebhookDelivery, keys: list[str], allow: Allowlist, now: datetime
    ) -> tuple[DeliveryStatus, Outcome]:
        """The claimed attempt: sign, POST, record, schedule the next one."""
        delivery_id, hooks = d.id, self.settings.webhooks
        attempt, url, body, limit, event = d.attempts, d.url, d.payload, d.max_attempts, d.event
        result = webhook_http.post(
            url,
            body.encode(),
            signing.headers(keys, delivery_id, int(self.wall()), body),
            timeout=webhook_http.Timeouts(
                total=hooks.webhook_timeout_seconds,
                connect=hooks.webhook_connect_timeout_seconds,
                first_byte=hooks.webhook_first_byte_timeout_seconds,
            ),
            allow=allow,
            resolver=self.resolver,
            now=now,
        )
        if result.status_code is not None:
            outcome = Outcome.answered
        else:
            outcome = Outcome.unknown if result.refused else Outcome.unreachable
        decision = decide(
            status_code=result.status_code,
            retry_after=result.retry_after,
            attempts_done=attempt,
            max_attempts=limit,
            rng=self.rng,
        )
        finished = max(self.clock(), now)
        delay = decision.delay
        next_at = finished + timedelta(seconds=delay) if delay is not None else None
        soon = delay is not None and delay <= SHORT_DELAY_SECONDS
        record = deliveries.AttemptRecord(
            attempt=attempt,
            started_at=now,
            duration_ms=result.duration_ms,
            address=result.address,
            status_code=result.status_code,
            error=result.error,
            response_excerpt=result.excerpt,
            response_bytes=result.body_bytes,
        )
        with session_scope(self.sessions) as session:
            current = deliveries.finish_attempt(
                session=session,
                delivery=d,
                record=record,
                status=decision.status,
                next_attempt_at=next_at,
                queued_at=next_at if soon else None,
                now=finished,
            )
        log.info(
            "webhook %s (%s) attempt %d/%d: %s -> %s%s",
            delivery_id,
            event,
            attempt,
            limit,
            result.status_code or result.error,
            decision.status.value,
            f", next in {decision.delay:.0f} s" if decision.delay is not None else "",
        )
        if current and soon and decision.delay is not None:
            self._publish(delivery_id, decision.delay)
        return decision.status, outcome

    def _put_back(
        self, d: WebhookDelivery, endpoint: Endpoint, gate: Pass, now: datetime
    ) -> DeliveryStatus:
        """Hand the claim back unspent, the delivery due again when the gates may let it
        through. A fire-once event (progress) is not kept for later; a delivery whose
        endpoint's circuit stayed open past the retry schedule's span is given up."""
        wait = gate.wait * (1.0 + self.rng.uniform(0.0, JITTER))
        at = now + timedelta(seconds=wait)
        why = (
            f"the endpoint {endpoint.origin} gave no answer: its circuit is open"
            if gate.verdict is Verdict.open
            else f"{'the endpoint' if gate.why != 'tenant' else 'the tenant'} has every "
            "delivery slot taken"
        )
        give_up = d.max_attempts <= 1 or (  # fire-once (progress), or waited too long
            gate.verdict is Verdict.open and at - d.created_at > GIVE_UP_AFTER
        )
        soon = wait <= SHORT_DELAY_SECONDS
        with session_scope(self.sessions) as session:
            if give_up:
                deliveries.end_unsent(
                    session=session,
                    delivery_id=d.id,
                    attempt=d.attempts,
                    error=f"not sent: {why}",
                    now=now,
                )
            else:
                moved = deliveries.put_back(
                    session=session,
                    delivery_id=d.id,
                    attempt=d.attempts,
                    next_attempt_at=at,
                    queued_at=at if soon else None,
                    now=now,
                )
        if give_up:
            log.info("webhook %s (%s) not sent: %s", d.id, d.event, why)
            return DeliveryStatus.failed
        log.info("webhook %s (%s) waits %.1f s: %s", d.id, d.event, wait, why)
        if moved and soon:
            self._publish(d.id, wait)
        return DeliveryStatus.pending

    def dispatch(self) -> list[str]:
        """Publish every due delivery that has no live broker message (a retry whose time has
        come, or a message lost to a broker or worker restart), in batches so a backlog after
        an outage drains at once without one huge transaction."""
        published: list[str] = []
        for _ in range(DISPATCH_BATCHES):
            with session_scope(self.sessions) as session:
                due = deliveries.take_due(
                    session=session,
                    now=self.clock(),
                    requeue_after=REQUEUE_AFTER,
                    limit=DISPATCH_BATCH,
                )
            for delivery_id in due:
                self._publish(delivery_id, 0.0)
            published += due
            if len(due) < DISPATCH_BATCH:
                break
        return published

    def progress(self, job_id: str, step: int, total: int, at: datetime) -> DeliveryStatus | None:
        """A job.progress event: one attempt, never retried, dropped once the job has left
        `running` (a late progress event would only mislead)."""
        with session_scope(self.sessions) as session:
            job = deliveries.job_is_running(session=session, job_id=job_id)
            if job is None:
                return None
            sent = Outbox(EventRenderer(self.links), lambda _d: None).record(
                session, job, WebhookEvent.progress, at=at, step=(step, total), max_attempts=1
            )
        return self.deliver(sent[0]) if sent else None

    def _publish(self, delivery_id: str, countdown: float) -> None:
        try:
            self.publish(delivery_id, countdown)
        except Exception as e:  # the dispatcher publishes it again after REQUEUE_AFTER
            log.warning("webhook %s not published: %s", delivery_id, e)


class DispatchLoop(threading.Thread):
    """The dispatcher inside each webhook worker: several may run, the claims keep them
    from sending one attempt twice."""

    def __init__(self, tick: Callable[[], object], every: float):
        super().__init__(name="webhook-dispatch", daemon=True)
        self.tick = tick
        self.every = every
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("webhook dispatch failed; trying again")
            if self.stopped.wait(self.every):
                return

    def stop(self) -> None:
        self.stopped.set()


def publisher(settings: Settings) -> Publish:
    app = make_celery(settings, main="daikon-webhook-publisher")

    def publish(delivery_id: str, countdown: float) -> None:
        app.send_task(
            TASK_DELIVER,
            args=[delivery_id],
            queue=settings.webhooks.webhook_queue,
            countdown=countdown or None,
        )

    return publish


@functools.cache
def deliverer() -> Deliverer:
    settings = Settings()
    store = make_store(settings, create_bucket=False)
    return Deliverer(
        sessions=make_session_factory(make_engine(settings.sqlalchemy_url)),
        settings=settings,
        publish=publisher(settings),
        links=Links.from_settings(settings, store, image_urls.secret_key(settings)),
    )


@shared_task(name=TASK_DELIVER, ignore_result=True)
def deliver_webhook(delivery_id: str) -> str:
    status = deliverer().deliver(delivery_id)
    return status.value if status else "skipped"


@shared_task(name=TASK_PROGRESS, ignore_result=True)
def webhook_progress(job_id: str, step: int, total: int, at: str) -> str:
    status = deliverer().progress(job_id, step, total, datetime.fromisoformat(at))
    return status.value if status else "dropped"
