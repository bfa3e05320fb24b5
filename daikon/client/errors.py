"""What the client raises: one base class, an `APIError` per HTTP status family carrying the
API's own `code`, `message` and `param` (api/errors.py's one error shape), and the failures
that never got an answer."""

from __future__ import annotations

import httpx2
from pydantic import ValidationError

from daikon.resources import ErrorResponse


class DaikonError(Exception):
    """Anything the Daikon client raises."""


class APIConnectionError(DaikonError):
    """No answer: the connection failed or broke, after the retries allowed."""


class WaitTimeout(DaikonError):
    """`wait(timeout=...)` ran out before the job finished (the job goes on)."""


class WebhookVerificationError(DaikonError):
    """A webhook whose signature, timestamp or body does not check out: do not trust it."""


class APIError(DaikonError):
    """The API answered with an error; `code` is the machine-readable reason."""

    def __init__(
        self,
        status: int,
        *,
        code: str,
        message: str,
        type: str = "error",
        param: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type
        self.param = param
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.message} ({self.code}, HTTP {self.status})"


class BadRequestError(APIError):
    """400: the request could not be read."""


class AuthenticationError(APIError):
    """401: no API key, or not a valid one."""


class PermissionDeniedError(APIError):
    """403: the key may not do this (an admin route with a tenant key)."""


class NotFoundError(APIError):
    """404: no such job, image, tenant or key (or not the key's tenant's)."""


class ConflictError(APIError):
    """409: e.g. `job_finished` on cancel, `idempotency_key_reused`, `tenant_exists`."""


class InvalidRequestError(APIError):
    """422: a parameter is missing, unknown or out of bounds; `param` names it."""


class RateLimitError(APIError):
    """429: a limit of the tenant's; `retry_after` says when to come back."""


class ServiceUnavailableError(APIError):
    """503: the queue, database or a stream slot is unavailable for now."""


class InternalServerError(APIError):
    """Another 5xx."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def retry_after_of(response: httpx2.Response) -> float | None:
    """Retry-After in seconds (this API sends whole seconds), if present and readable."""
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def error_from(response: httpx2.Response) -> APIError:
    """The APIError for an error answer, from the API's error body when it has one."""
    status = response.status_code
    cls = _BY_STATUS.get(status, InternalServerError if status >= 500 else APIError)
    retry_after = retry_after_of(response)
    try:
        body = ErrorResponse.model_validate_json(response.content).error
    except ValidationError:
        text = response.text.strip()[:300] or response.reason_phrase
        return cls(status, code=f"http_{status}", message=text, retry_after=retry_after)
    return cls(
        status,
        code=body.code,
        message=body.message,
        type=body.type,
        param=body.param,
        retry_after=retry_after,
    )
