"""The models the client returns: the very classes the API validates and documents with
(daikon/contract.py, daikon/resources.py, daikon/webhooks/payload.py), under short names, and
the typed events of a job's event stream."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

from daikon.client.job_fields import JobFields
from daikon.contract import (
    ErrorDetail,
    ImageOut,
    JobList,
    JobOut,
    JobParams,
    JobRequest,
    JobStatus,
    Progress,
    WebhookEvent,
)
from daikon.resources import (
    AttemptOut,
    DeliveryList,
    DeliveryOut,
    KeyList,
    KeyOut,
    ModelList,
    ModelOut,
    NewKeyOut,
    SecretOut,
    StreamStatus,
    TenantList,
    TenantOut,
)
from daikon.webhooks.payload import WebhookPayload

# Short names for the same classes.
Job = JobOut
JobPage = JobList
Image = ImageOut
Model = ModelOut
Tenant = TenantOut
ApiKey = KeyOut
NewApiKey = NewKeyOut
WebhookSecret = SecretOut
Delivery = DeliveryOut


def check_fields(fields: Mapping[str, Any]) -> None:
    """Refuse a keyword that is no JobRequest field, as Python refuses an unexpected keyword
    argument (before anything is sent): for callers whose keywords no type checker saw."""
    known = JobRequest.model_fields.keys() - {"prompt"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(
            f"submit() got unexpected keyword arguments {unknown}; JobRequest's fields: "
            f"{', '.join(sorted(known))}"
        )


class StatusEvent(BaseModel):
    """The job was queued (with its place in the queue) or started running."""

    kind: Literal["status"] = "status"
    event_id: int = Field(description="The SSE id: resume after it with Last-Event-ID.")
    data: StreamStatus


class ProgressEvent(BaseModel):
    """A denoising step finished."""

    kind: Literal["progress"] = "progress"
    event_id: int
    data: Progress


class DoneEvent(BaseModel):
    """The last event: the finished job (succeeded, failed or canceled)."""

    kind: Literal["done"] = "done"
    event_id: int
    job: JobOut


JobEvent = StatusEvent | ProgressEvent | DoneEvent

__all__ = [
    "ApiKey",
    "AttemptOut",
    "Delivery",
    "DeliveryList",
    "DeliveryOut",
    "DoneEvent",
    "ErrorDetail",
    "Image",
    "ImageOut",
    "Job",
    "JobEvent",
    "JobFields",
    "JobList",
    "JobOut",
    "JobPage",
    "JobParams",
    "JobRequest",
    "JobStatus",
    "KeyList",
    "KeyOut",
    "Model",
    "ModelList",
    "ModelOut",
    "NewApiKey",
    "NewKeyOut",
    "Progress",
    "ProgressEvent",
    "SecretOut",
    "StatusEvent",
    "StreamStatus",
    "Tenant",
    "TenantList",
    "TenantOut",
    "WebhookEvent",
    "WebhookPayload",
    "WebhookSecret",
]
