"""The models the client returns: the very classes the API validates and documents with
(daikon/contract.py, daikon/resources.py, daikon/webhooks/payload.py), under short names, and
the typed events of a job's event stream."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from pydantic import BaseModel, Field

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


class JobFields(TypedDict, total=False):
    """`submit`'s keyword arguments: JobRequest's fields (the API checks the bounds)."""

    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    true_cfg_scale: float
    candidates: int
    top_k: int
    seed: int
    model: str
    scheduler: str
    priority: int
    metadata: dict[str, Any]
    webhook_url: str
    webhook_events: list[WebhookEvent | str]
    # Edits (docs/edits.md): mode image or inpaint, with `image=`/`mask=` files or these ids.
    mode: Literal["text", "image", "inpaint"]
    strength: float
    mask_blur: int
    image_id: str
    mask_id: str


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
