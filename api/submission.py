"""Submitting a job: idempotency, per-tenant limits, commit, then publish. Shared by
`POST /v1/jobs` and the OpenAI-compatible route."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from sqlalchemy.orm import Session

from api import inputs as edit_inputs
from api.auth import Principal
from api.inputs import Upload
from api.services import Services
from daikon import limits
from daikon.capabilities import ModelCapabilities
from daikon.contract import (
    DEFAULT_PRIORITY,
    DEFAULT_WEBHOOK_EVENTS,
    PRIORITY_MAX,
    JobParams,
    JobRequest,
)
from daikon.errors import (
    Conflict,
    InvalidRequest,
    RequestErrorCode,
    ServiceUnavailable,
    TooManyRequests,
)
from db import deliveries, jobs, retention
from db.models import Job, new_id
from db.session import session_scope
from server import requests
from server.celery_config import publish_job, soft_time_limit
from server.served_models import ServedModel
from server.settings import Settings
from server.webhooks.safety import Allowlist, UnsafeDestination, check_url

log = logging.getLogger("daikon.api")


@dataclass(frozen=True)
class Submitted:
    job_id: str
    created: bool  # False: an idempotent replay of an earlier submission
    # The new job as committed, and its queue position then (None for a replay): its reply
    # needs no second read.
    job: Job | None = None
    queue_position: int | None = None


def request_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(job: Job, digest: str, key: str) -> Submitted:
    if job.request_hash != digest:
        raise Conflict(
            f"Idempotency-Key {key!r} was used with a different request body",
            param="Idempotency-Key",
            code=RequestErrorCode.idempotency_key_reused,
        )
    return Submitted(job.id, created=False)


def submit(
    svc: Services,
    principal: Principal,
    body: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    files: Mapping[str, bytes | Upload] | None = None,
) -> Submitted:
    """Validate, then create and publish the job. `files` are uploaded inputs by role (image,
    mask), as bytes or as an Upload its route checked already.

    In order of cost: the body and the files' headers are checked, then the tenant's limits
    (an idempotent replay is answered before them), and only then are the files decoded, once
    each, and stored; an edit's inputs are deleted again if the job is not created."""
    settings = svc.settings
    req = requests.job_request(settings).model_validate(body)
    check_webhook_url(svc, req.webhook_url, principal.tenant_id)
    model = req.model or settings.default_model_name
    served = svc.served_models.get(model)
    capabilities = served.capabilities if served is not None else None
    checked = edit_inputs.gather(svc, principal.tenant_id, req, files or {})
    params = requests.resolve(
        req, settings, capabilities, image_size=checked.size if checked else None
    )
    if served is not None:  # else no worker has served it yet: the worker checks (same codes)
        _check_model(params, served)
    digest = request_hash({**body, "inputs": checked.digest()} if checked else body)
    priority = req.priority if req.priority is not None else DEFAULT_PRIORITY
    with session_scope(svc.sessions) as session:
        if idempotency_key is not None:
            # A retry of an accepted request is answered before any limit applies.
            held = _held(svc, session, principal, idempotency_key)
            if held is not None:
                return _replay(held, digest, idempotency_key)
        _check_limits(
            svc,
            session,
            principal,
            params,
            served,
            priority=priority,
            incoming=checked.byte_size if checked else 0,
        )
    inputs = checked.decode(settings) if checked else None  # the one decode, past the limits
    if inputs is not None and inputs.mask is not None and capabilities is not None:
        _check_mask(inputs.mask, capabilities)
    job_id = new_id()
    stored: dict[str, dict[str, Any]] = {}
    try:
        created = _create(
            svc,
            principal,
            req,
            params,
            digest,
            idempotency_key,
            job_id=job_id,
            inputs=inputs,
            stored=stored,
        )
    except BaseException:
        edit_inputs.delete_inputs(svc, stored)
        raise
    if not created.created:  # an idempotent replay: this request's copies are not needed
        edit_inputs.delete_inputs(svc, stored)
        return created
    enqueue(
        svc,
        job_id=job_id,
        model=params.model,
        priority=priority,
        cost=params.cost,
        candidates=params.candidates,
        stored=stored,
    )
    return created


def _held(svc: Services, session: Session, principal: Principal, key: str) -> Job | None:
    """The job an Idempotency-Key already names for this tenant, if any."""
    jobs.release_expired_idempotency_key(
        session=session,
        tenant_id=principal.tenant_id,
        key=key,
        window=timedelta(hours=svc.settings.api.idempotency_hours),
    )
    return jobs.find_by_idempotency_key(session=session, tenant_id=principal.tenant_id, key=key)


def check_room(svc: Services, principal: Principal) -> None:
    """The tenant's limits that need no request body, without counting against them: whether
    a submission now could be accepted at all (api/admission.py asks before an upload's body
    is received)."""
    own = principal.limits
    try:
        wait = svc.rate_limit.exceeded(principal.tenant_id, own.submits_per_minute)
    except redis.RedisError as e:
        raise _queue_unavailable() from e
    if wait is not None:
        raise _rate_limited(svc, principal, wait)
    with session_scope(svc.sessions) as session:
        _check_active(svc, session, principal)
        _check_quota(svc, session, principal, incoming=0)


def _check_limits(
    svc: Services,
    session: Session,
    principal: Principal,
    params: JobParams,
    served: ServedModel | None,
    *,
    priority: int,
    incoming: int,
) -> None:
    """The tenant's limits for this job (one submission counted against the rate); `incoming`:
    the bytes of its uploaded inputs, as sent (the storage quota's estimate: what is stored is
    their PNG, counted exactly once stored)."""
    own = principal.limits  # the tenant's own, set by an admin
    max_candidates = own.max_candidates
    if max_candidates is not None and params.candidates > max_candidates:
        raise InvalidRequest(
            f"candidates: {params.candidates} is more than this tenant's limit of {max_candidates}",
            param="candidates",
        )
    check_priority(svc.settings, principal, priority)
    try:
        wait = svc.rate_limit.hit(principal.tenant_id, own.submits_per_minute)
    except redis.RedisError as e:  # the broker is the same Redis: nothing could be queued
        raise _queue_unavailable() from e
    if wait is not None:
        raise _rate_limited(svc, principal, wait)
    _check_active(svc, session, principal)
    if served is not None:
        _check_queued_cost(session, principal.tenant_id, params, served)
    _check_quota(svc, session, principal, incoming=incoming)


def _check_quota(svc: Services, session: Session, principal: Principal, *, incoming: int) -> None:
    retention.check_quota(
        session=session,
        tenant_id=principal.tenant_id,
        incoming=incoming,
        default_quota=svc.settings.limits.tenant_storage_quota_bytes,
    )


def _rate_limited(svc: Services, principal: Principal, wait: int) -> TooManyRequests:
    limit = principal.limits.submits_per_minute or svc.settings.limits.tenant_submits_per_minute
    return TooManyRequests(f"more than {limit} submissions a minute", retry_after=wait)


def _check_active(svc: Services, session: Session, principal: Principal) -> None:
    own = principal.limits
    max_active = own.max_active_jobs or svc.settings.limits.tenant_max_active_jobs
    active = jobs.count_active(session=session, tenant_id=principal.tenant_id, up_to=max_active)
    if active >= max_active:
        raise TooManyRequests(
            f"{active} jobs are queued or running; the limit is {max_active}",
            retry_after=5,
            code=RequestErrorCode.too_many_active_jobs,
        )


def _create(
    svc: Services,
    principal: Principal,
    req: JobRequest,
    params: JobParams,
    digest: str,
    idempotency_key: str | None,
    *,
    job_id: str,
    inputs: edit_inputs.Inputs | None,
    stored: dict[str, dict[str, Any]],
) -> Submitted:
    """The row, committed (with its queue position then), or the earlier job an
    Idempotency-Key names when a concurrent request with it won (`created` False)."""
    options = jobs.JobOptions(
        priority=req.priority if req.priority is not None else DEFAULT_PRIORITY,
        metadata=req.metadata,
        webhook_url=req.webhook_url,
        webhook_events=[e.value for e in (req.webhook_events or DEFAULT_WEBHOOK_EVENTS)],
        idempotency_key=idempotency_key,
        request_hash=digest,
        job_id=job_id,
    )
    with session_scope(svc.sessions) as session:
        if inputs is not None:  # every check passed: store them, under the job's own prefix
            stored.update(edit_inputs.store_inputs(svc, job_id, inputs))
            options = dataclasses.replace(options, inputs=dict(stored))
        try:
            job = jobs.create(
                session=session, params=params, tenant_id=principal.tenant_id, options=options
            )
        except jobs.IdempotencyConflict as race:  # the same key won a concurrent request
            return _replay(race.job, digest, idempotency_key or "")
        position = svc.places.ahead_of_new(
            session, job.id, params.model, options.priority, job.turn
        )
        if position is None:  # not a deep queue: its count is exact and cheap
            position = jobs.queue_position(session=session, job=job)
            svc.places.learn(params.model, position)
    return Submitted(job.id, created=True, job=job, queue_position=position)


def enqueue(
    svc: Services,
    *,
    job_id: str,
    model: str,
    priority: int,
    cost: float,
    candidates: int,
    stored: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Publish a committed job; if the broker refuses, delete it and the inputs this request
    stored (`stored`; nothing left behind) and raise 503. Shared by submissions and the
    dashboard's retry."""
    settings = svc.settings
    served = svc.served_models.get(model)
    allowance = (
        limits.time_allowance(
            limits.batch_ceiling(cost, candidates, served.limits),
            served.limits,
            soft_time_limit(settings),
        )
        if served is not None
        else None
    )
    # Published after the commit so the worker always finds the row (an outbox: should this
    # process die before `enqueued_at` is set, a worker's sweeper publishes the job again).
    try:
        publish_job(
            svc.celery, settings, job_id=job_id, model=model, priority=priority, allowance=allowance
        )
    except Exception as e:
        log.error("enqueue of job %s failed: %s", job_id, e)
        with session_scope(svc.sessions) as session:
            jobs.delete(session=session, job_id=job_id)
        edit_inputs.delete_inputs(svc, stored or {})
        raise _queue_unavailable() from e
    # Published: marked so in a batch (api/enqueued.py); a lost mark costs one more publish.
    svc.enqueued.add(job_id)


def check_webhook_url(svc: Services, url: str | None, tenant_id: str | None) -> None:
    """Submit-time destination check: 422 naming webhook_url, before anything is written."""
    if url is None:
        return
    allow = Allowlist.parse(svc.settings.webhook_allow_list)
    trusted = svc.settings.webhook_allow_tenant_names
    if trusted and (allow.hosts or allow.networks):
        with session_scope(svc.sessions) as session:
            allow = deliveries.allowlist_for(
                session=session, tenant_id=tenant_id, allow=allow, trusted=trusted
            )
    try:
        check_url(url, allow)
    except UnsafeDestination as e:
        raise InvalidRequest(f"webhook_url: {e}", param="webhook_url") from None


def highest_priority(settings: Settings, principal: Principal) -> int:
    """The highest priority the caller's tenant may ask for: its own, set by an admin, else
    the deployment's; an admin's (the admin tenant's) all."""
    own = principal.limits.max_priority
    if own is not None:
        return own
    return PRIORITY_MAX if principal.is_admin else settings.limits.tenant_max_priority


def check_priority(settings: Settings, principal: Principal, priority: int) -> None:
    """A job may not jump the queue further than an admin allowed its tenant: 422 naming
    `priority` (checked with the other per-tenant limits, before anything is stored)."""
    most = highest_priority(settings, principal)
    if priority > most:
        raise InvalidRequest(
            f"priority: {priority} is above this tenant's highest priority of {most} (an "
            "admin can raise it)",
            param="priority",
        )


def _check_model(params: JobParams, served: ServedModel) -> None:
    """What this model can do (a parameter it would ignore or fail on is named, with the
    model) and what one job may cost on its device."""
    if served.capabilities is not None:
        violations = served.capabilities.check(params)
        if violations:
            raise InvalidRequest(
                "; ".join(v.message for v in violations),
                param=violations[0].param,
                code=RequestErrorCode[violations[0].code],
            )
    refusal = limits.too_large(
        params.cost,
        served.limits,
        model=params.model,
        device=served.device,
        describe=params.describe_cost(),
    )
    if refusal:
        raise InvalidRequest(refusal, code=RequestErrorCode.job_too_large)


def _check_mask(mask: edit_inputs.InputImage, capabilities: ModelCapabilities) -> None:
    """A mask this model would not honour exactly (a token model completes only whole token
    rows at the top): the mask's pixels are known only once decoded, past the limits."""
    if not capabilities.checks_mask_pixels:
        return
    violations = capabilities.check_mask(mask.width, mask.height, mask.pixels())
    if violations:
        raise InvalidRequest(
            "; ".join(v.message for v in violations),
            param=violations[0].param,
            code=RequestErrorCode[violations[0].code],
        )


def _check_queued_cost(
    session: Session, tenant_id: str, params: JobParams, served: ServedModel
) -> None:
    """One tenant's queued and running work for a model stays within its budget, so it can
    never fill the model's queue with what belongs to all."""
    budget = served.limits.tenant_queued_cost
    held = jobs.active_cost(session=session, tenant_id=tenant_id, model=params.model)
    if held + params.cost > budget:
        raise TooManyRequests(
            f"this tenant's queued and running jobs for model {params.model!r} cost "
            f"{held:.4g} megapixel-steps; with this one ({params.cost:.4g}) they would pass "
            f"the budget of {budget:g}: retry once some have finished",
            retry_after=10,
            code=RequestErrorCode.too_much_queued_work,
        )


def _queue_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "the job queue is unavailable; nothing was created, retry shortly",
        code=RequestErrorCode.queue_unavailable,
    )
