"""A small exception hierarchy; the API maps each class to one HTTP status at the edge.

`RequestErrorCode` is the registry of the `error.code` a refused request answers with, beside
the job error codes (`daikon.contract.JOB_ERROR_CODES`): each raise site names its code from
here, and GET /openapi.json (`components.x-error-codes`) and docs/api.md list them from it.
"""

from __future__ import annotations

import enum


class RequestErrorCode(enum.StrEnum):
    """A request error's `error.code`: the string clients match on (never renamed), the HTTP
    status it is answered with, and a line on when."""

    status: int
    meaning: str

    def __new__(cls, code: str, status: int, meaning: str) -> RequestErrorCode:
        member = str.__new__(cls, code)
        member._value_ = code
        member.status = status
        member.meaning = meaning
        return member

    bad_request = (
        "bad_request",
        400,
        "The request cannot be read: a NUL character in the path, query, headers or body, or "
        "a malformed body.",
    )
    invalid_json = (
        "invalid_json",
        400,
        "The body (or a multipart `request` part) is not valid JSON, not a JSON object, or "
        "nested too deep.",
    )
    invalid_image = "invalid_image", 400, "An uploaded input is empty or cannot be decoded."
    csrf_failed = (
        "csrf_failed",
        400,
        "Dashboard: a form's CSRF token is missing, wrong or expired.",
    )
    invalid_api_key = ("invalid_api_key", 401, "No API key, or an unknown or revoked one.")
    forbidden = "forbidden", 403, "The key may not do this (an admin key is needed)."
    storage_quota_exceeded = (
        "storage_quota_exceeded",
        403,
        "The tenant stores as many bytes as its storage quota, or the inputs would pass it; "
        "nothing was stored.",
    )
    not_found = "not_found", 404, "Nothing here, or it belongs to another tenant."
    method_not_allowed = (
        "method_not_allowed",
        405,
        "The path exists but not with this method; `Allow` lists those that do.",
    )
    conflict = "conflict", 409, "The request conflicts with the resource's state."
    idempotency_key_reused = (
        "idempotency_key_reused",
        409,
        "The Idempotency-Key came with a different body.",
    )
    job_finished = ("job_finished", 409, "The job to cancel already succeeded or failed.")
    job_not_retryable = ("job_not_retryable", 409, "Only failed or canceled jobs are retried.")
    job_canceled = (
        "job_canceled",
        409,
        "OpenAI-compatible routes: the job was canceled while the request waited.",
    )
    tenant_exists = "tenant_exists", 409, "A tenant of that name exists."
    delivery_in_flight = (
        "delivery_in_flight",
        409,
        "An attempt of the webhook delivery to redeliver is in flight; retry in a moment.",
    )
    request_entity_too_large = (
        "request_entity_too_large",
        413,
        "The body, or an uploaded input, is larger than its limit (or an image has too many "
        "pixels).",
    )
    unsupported_media_type = (
        "unsupported_media_type",
        415,
        "A body of a media type the route does not take, or an input that is not PNG, JPEG "
        "or WebP.",
    )
    invalid_request = (
        "invalid_request",
        422,
        "A field, parameter or header is missing, unknown, of the wrong type or out of "
        "bounds; `param` names the first (400 on the OpenAI-compatible routes).",
    )
    too_many_scans = (
        "too_many_scans",
        422,
        "An uploaded JPEG has more scans than DAIKON_MAX_INPUT_JPEG_SCANS.",
    )
    unsupported_parameter = (
        "unsupported_parameter",
        422,
        "The model cannot honour a parameter as asked (refused at submit; also a job error code).",
    )
    unsupported_scheduler = (
        "unsupported_scheduler",
        422,
        "The model cannot use the scheduler asked for (refused at submit; also a job error code).",
    )
    job_too_large = (
        "job_too_large",
        422,
        "The job costs more megapixel-steps than its model allows (refused at submit; also a "
        "job error code).",
    )
    rate_limited = ("rate_limited", 429, "Too many requests; retry after `Retry-After` seconds.")
    too_many_active_jobs = (
        "too_many_active_jobs",
        429,
        "The tenant has as many queued or running jobs as it may (DAIKON_TENANT_MAX_ACTIVE_JOBS).",
    )
    too_much_queued_work = (
        "too_much_queued_work",
        429,
        "The tenant's queued and running work for the model would pass its `tenant_queued_cost`.",
    )
    too_many_login_attempts = (
        "too_many_login_attempts",
        429,
        "Dashboard: too many sign-in attempts a minute from this address.",
    )
    internal_error = ("internal_error", 500, "Anything unexpected; the server logs it.")
    image_missing = (
        "image_missing",
        500,
        "OpenAI-compatible routes: an image of the finished job is missing from storage.",
    )
    service_unavailable = (
        "service_unavailable",
        503,
        "A service the request needs is unavailable; retry.",
    )
    database_unavailable = (
        "database_unavailable",
        503,
        "The database cannot be reached; retry shortly.",
    )
    queue_unavailable = (
        "queue_unavailable",
        503,
        "The job queue is unavailable; nothing was created, retry.",
    )
    broker_unavailable = (
        "broker_unavailable",
        503,
        "Worker heartbeats (Redis) are unavailable; retry shortly.",
    )
    revocation_not_propagated = (
        "revocation_not_propagated",
        503,
        "The change is saved, but the API processes could not be told (Redis); retry until 200.",
    )
    server_busy = (
        "server_busy",
        503,
        "The server is receiving as many request bodies as it holds; retry shortly.",
    )
    too_many_streams = (
        "too_many_streams",
        503,
        "Too many open event streams on this server or for this tenant; poll instead.",
    )
    too_many_waiting = (
        "too_many_waiting",
        503,
        "Too many OpenAI-compatible requests waiting on this server or for this tenant; "
        "nothing was created.",
    )
    job_not_finished = (
        "job_not_finished",
        504,
        "OpenAI-compatible routes: the job is still running at the deadline; `Location` names it.",
    )


class DaikonError(Exception):
    status = 500
    type = "server_error"
    code = RequestErrorCode.internal_error

    def __init__(
        self, message: str, *, param: str | None = None, code: RequestErrorCode | None = None
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        if code:
            self.code = code


class InvalidRequest(DaikonError):
    status = 422
    type = "invalid_request_error"
    code = RequestErrorCode.invalid_request


class Unauthenticated(DaikonError):
    status = 401
    type = "authentication_error"
    code = RequestErrorCode.invalid_api_key


class Forbidden(DaikonError):
    status = 403
    type = "permission_error"
    code = RequestErrorCode.forbidden


class NotFound(DaikonError):
    status = 404
    type = "not_found_error"
    code = RequestErrorCode.not_found


class Conflict(DaikonError):
    status = 409
    type = "conflict_error"
    code = RequestErrorCode.conflict


class TooManyRequests(DaikonError):
    """A limit of the tenant's; the answer carries Retry-After."""

    status = 429
    type = "rate_limit_error"
    code = RequestErrorCode.rate_limited

    def __init__(self, message: str, *, retry_after: int, code: RequestErrorCode | None = None):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ServiceUnavailable(DaikonError):
    status = 503
    type = "service_unavailable"
    code = RequestErrorCode.service_unavailable


class BadRequest(DaikonError):
    status = 400
    type = "invalid_request_error"
    code = RequestErrorCode.bad_request


class UnsupportedMediaType(DaikonError):
    status = 415
    type = "invalid_request_error"
    code = RequestErrorCode.unsupported_media_type


class PayloadTooLarge(DaikonError):
    status = 413
    type = "invalid_request_error"
    code = RequestErrorCode.request_entity_too_large
