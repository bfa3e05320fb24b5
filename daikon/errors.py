"""A small exception hierarchy; the API maps each class to one HTTP status at the edge."""

from __future__ import annotations


class DaikonError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code:
            self.code = code


class InvalidRequest(DaikonError):
    status = 422
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthenticated(DaikonError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(DaikonError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(DaikonError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class Conflict(DaikonError):
    status = 409
    type = "conflict_error"
    code = "conflict"


class TooManyRequests(DaikonError):
    """A limit of the tenant's; the answer carries Retry-After."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ServiceUnavailable(DaikonError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class BadRequest(DaikonError):
    status = 400
    type = "invalid_request_error"
    code = "bad_request"


class UnsupportedMediaType(DaikonError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class PayloadTooLarge(DaikonError):
    status = 413
    type = "invalid_request_error"
    code = "request_entity_too_large"
