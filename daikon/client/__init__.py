"""Daikon's Python client: `Daikon` (sync) and `AsyncDaikon`, returning the pydantic models
the API validates with, and `verify_webhook` for receivers. docs/client.md shows them in use.

    from daikon.client import Daikon
    with Daikon() as daikon:                       # DAIKON_URL, DAIKON_API_KEY
        job = daikon.wait(daikon.submit("a red circle above a blue square", top_k=2).id)
        daikon.save_images(job, "images")
"""

from __future__ import annotations

from daikon.client import models
from daikon.client._base import RetryPolicy
from daikon.client.async_ import AsyncDaikon
from daikon.client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DaikonError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    WaitTimeout,
    WebhookVerificationError,
)
from daikon.client.models import DoneEvent, JobEvent, ProgressEvent, StatusEvent
from daikon.client.sync import Daikon
from daikon.client.webhooks import verify_webhook

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncDaikon",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "Daikon",
    "DaikonError",
    "DoneEvent",
    "InternalServerError",
    "InvalidRequestError",
    "JobEvent",
    "NotFoundError",
    "PermissionDeniedError",
    "ProgressEvent",
    "RateLimitError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "StatusEvent",
    "WaitTimeout",
    "WebhookVerificationError",
    "models",
    "verify_webhook",
]
