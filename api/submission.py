"""Submitting a job: idempotency, per-tenant limits, commit, then publish. Shared by
`POST /v1/jobs` and the OpenAI-compatible route."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis

from api.auth import Principal
from api.services import Services
from api.webhook_events import check_webhook_url
from daikon.celery_config import publish_job
from daikon.contract import (
    DEFAULT_PRIORITY,
    DEFAULT_WEBHOOK_EVENTS,
    JobRequest,
)
from daikon.errors import Conflict, DaikonError, InvalidRequest, ServiceUnavailable
from db import jobs
from db.models import Job
from db.session import session_scope

log = logging.getLogger("daikon.api")
IDEMPOTENCY_KEY_MAX = 255


class TooManyRequests(DaikonError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Submitted:
    job_id: str
    created: bool  # False: an idempotent replay of an earlier submission


def request_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(job: Job, digest: str, key: str) -> Submitted:
    if job.request_hash != digest:
        raise Conflict(
            f"Idempotency-Key {key!r} was used with a different request body",
            param="Idempotency-Key", code="idempotency_key_reused",
        )  # fmt: skip
    return Submitted(job.id, created=False)


def submit(
    svc: Services,
    principal: Principal,
    body: dict[str, Any],
    *,
    idempotency_key: str | None = None,
) -> Submitted:
    settings = svc.settings
    req = JobRequest.model_validate(body, context={"settings": settings})
    check_webhook_url(svc, req.webhook_url)
    params = req.resolve(settings)
    digest = request_hash(body)
    if idempotency_key is not None and not (0 < len(idempotency_key) <= IDEMPOTENCY_KEY_MAX):
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters",
            param="Idempotency-Key",
        )

    options = jobs.JobOptions(
        priority=req.priority if req.priority is not None else DEFAULT_PRIORITY,
        metadata=req.metadata,
        webhook_url=req.webhook_url,
        webhook_events=[e.value for e in (req.webhook_events or DEFAULT_WEBHOOK_EVENTS)],
        idempotency_key=idempotency_key,
        request_hash=digest,
    )
    with session_scope(svc.sessions) as session:
        if idempotency_key is not None:
            # A retry of an accepted request is answered before any limit applies.
            jobs.release_expired_idempotency_key(
                session=session, tenant_id=principal.tenant_id, key=idempotency_key,
                window=timedelta(hours=settings.idempotency_hours),
            )  # fmt: skip
            held = jobs.find_by_idempotency_key(
                session=session, tenant_id=principal.tenant_id, key=idempotency_key
            )
            if held is not None:
                return _replay(held, digest, idempotency_key)
        try:
            wait = svc.live.hit_rate_limit(principal.tenant_id, settings.tenant_submits_per_minute)
        except redis.RedisError as e:  # the broker is the same Redis: nothing could be queued
            raise _queue_unavailable() from e
        if wait is not None:
            raise TooManyRequests(
                f"more than {settings.tenant_submits_per_minute} submissions a minute",
                retry_after=wait,
            )
        active = jobs.count_active(session=session, tenant_id=principal.tenant_id)
        if active >= settings.tenant_max_active_jobs:
            raise TooManyRequests(
                f"{active} jobs are queued or running; the limit is "
                f"{settings.tenant_max_active_jobs}",
                retry_after=5, code="too_many_active_jobs",
            )  # fmt: skip
        try:
            job = jobs.create(
                session=session, params=params, tenant_id=principal.tenant_id, options=options
            )
        except jobs.IdempotencyConflict as race:  # the same key won a concurrent request
            return _replay(race.job, digest, idempotency_key or "")
        job_id, model, priority = job.id, job.model, job.priority
    # Published after the commit so the worker always finds the row (an outbox: should this
    # process die before `enqueued_at` is set, a worker's sweeper publishes the job again).
    try:
        publish_job(svc.celery, settings, job_id=job_id, model=model, priority=priority)
    except Exception as e:
        log.error("enqueue of job %s failed: %s", job_id, e)
        with session_scope(svc.sessions) as session:
            jobs.delete(session=session, job_id=job_id)
        raise _queue_unavailable() from e
    try:
        with session_scope(svc.sessions) as session:
            jobs.mark_enqueued(session=session, job_id=job_id)
    except Exception as e:  # published already: at worst the sweeper publishes it once more
        log.warning("could not mark job %s published: %s", job_id, e)
    return Submitted(job_id, created=True)


def _queue_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "the job queue is unavailable; nothing was created, retry shortly",
        code="queue_unavailable",
    )
