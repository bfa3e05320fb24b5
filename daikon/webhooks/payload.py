"""The body of every webhook: {"type", "timestamp", "data": the job object}."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from daikon.contract import JobOut, WebhookEvent


class WebhookPayload(BaseModel):
    type: WebhookEvent
    timestamp: datetime = Field(description="When the event happened (not when it was sent).")
    data: JobOut = Field(description="The job object, as GET /v1/jobs/{id} returned it then.")


def render(event: WebhookEvent, at: datetime, job: JobOut) -> str:
    """Compact JSON, frozen once: every attempt sends these exact bytes."""
    return WebhookPayload(type=event, timestamp=at, data=job).model_dump_json()
