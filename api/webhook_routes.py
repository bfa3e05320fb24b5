"""Webhooks over HTTP: a tenant's signing secret, a job's deliveries with every attempt, and an
admin's redelivery. Sending happens in the webhook worker, never here."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint

from api import openapi
from api.auth import authenticate, require_admin
from api.bodies import json_body, read_body
from api.serialize import outbox
from api.services import services
from daikon.resources import AttemptOut, DeliveryList, DeliveryOut, SecretCreate, SecretOut
from db import deliveries, jobs
from db.models import WebhookAttempt, WebhookDelivery
from db.session import session_scope

bp = Blueprint("webhooks", __name__, url_prefix="/v1")


def attempt_out(a: WebhookAttempt) -> AttemptOut:
    return AttemptOut(
        attempt=a.attempt,
        started_at=a.started_at,
        duration_ms=a.duration_ms,
        status_code=a.status_code,
        error=a.error,
        response_excerpt=a.response_excerpt,
        response_bytes=a.response_bytes,
        next_attempt_at=a.next_attempt_at,
    )


def delivery_out(d: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        job_id=d.job_id,
        event=d.event,
        url=d.url,
        status=d.status,
        attempt_count=d.attempts,
        max_attempts=d.max_attempts,
        next_attempt_at=d.next_attempt_at,
        created_at=d.created_at,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        attempts=[attempt_out(a) for a in d.log],
    )


@bp.post("/webhooks/secret")
@openapi.operation(
    "Make or rotate the webhook signing secret",
    tags=["webhooks"],
    body=SecretCreate,
    responses={
        201: openapi.Reply(
            "The new secret: the only response that shows it.",
            SecretOut,
            headers={"Cache-Control": True},
        )
    },
)
def create_secret() -> Any:
    principal = authenticate()
    svc = services()
    body = SecretCreate.model_validate(json_body() if read_body() else {})
    hours = svc.settings.webhooks.webhook_secret_overlap_hours
    if body.overlap_hours is not None:
        hours = body.overlap_hours
    with session_scope(svc.sessions) as session:
        made = deliveries.rotate_secret(
            session=session,
            tenant_id=principal.tenant_id,
            overlap=timedelta(hours=hours),
            cipher=svc.cipher,
        )
        out = SecretOut(
            secret=made.secret,
            created_at=made.created_at,
            previous_expires_at=made.previous_expires_at,
        )
    return out.model_dump(mode="json"), 201, {"Cache-Control": "no-store"}


@bp.get("/jobs/<job_id>/webhooks")
@openapi.operation(
    "List a job's webhook deliveries and their attempts",
    tags=["webhooks"],
    responses={200: DeliveryList},
)
def list_deliveries(job_id: str) -> Any:
    principal = authenticate()
    svc = services()
    with session_scope(svc.sessions) as session:
        jobs.get(session=session, job_id=job_id, tenant_id=principal.tenant_id)
        rows = deliveries.list_for_job(session=session, job_id=job_id)
        return DeliveryList(deliveries=[delivery_out(d) for d in rows]).model_dump(mode="json")


@bp.post("/admin/webhooks/<delivery_id>/redeliver")
@openapi.operation(
    "Redeliver a webhook (same webhook-id)",
    tags=["admin", "webhooks"],
    auth="admin",
    responses={202: openapi.Reply("Scheduled now.", DeliveryOut)},
    errors={409: "`delivery_in_flight`: an attempt is being sent right now; retry shortly."},
)
def redeliver(delivery_id: str) -> Any:
    require_admin()
    svc = services()
    with session_scope(svc.sessions) as session:
        out = delivery_out(deliveries.redeliver(session=session, delivery_id=delivery_id))
    # Scheduled in the database: if this publish fails, the dispatcher publishes it later.
    outbox(svc).send([delivery_id])
    return out.model_dump(mode="json"), 202
