"""One JSON error shape for every failure: {"error": {"type", "code", "message", "param"}}."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, jsonify, request
from gunicorn.http.errors import ParseException
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from daikon.errors import DaikonError, RequestErrorCode
from daikon.resources import ErrorBody, ErrorResponse

log = logging.getLogger("daikon.api")


def error_response(
    status: int, *, type: str, code: str, message: str, param: str | None = None
) -> tuple[Response, int]:
    body = ErrorResponse(error=ErrorBody(type=type, code=code, message=message, param=param))
    return jsonify(body.model_dump(mode="json")), status


def validation_error(
    exc: ValidationError, *, status: int = 422, rename: Mapping[str, str] | None = None
) -> tuple[Response, int]:
    """Name every bad field in the message; the first one is `param`. `rename` maps a model's
    field names to the ones the client sent (for routes that translate a request)."""
    parts: list[str] = []
    first: str | None = None
    for err in exc.errors(include_url=False):
        names = [str(p) for p in err["loc"]]
        if names and rename:
            names[0] = rename.get(names[0], names[0])
        loc = ".".join(names) or None
        first = first or loc
        text = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            text = "unknown field"
        elif err["type"] == "missing":
            text = "is required"
        parts.append(f"{loc}: {text}" if loc else text)
    return error_response(
        status,
        type="invalid_request_error",
        code=RequestErrorCode.invalid_request,
        message="; ".join(parts),
        param=first,
    )


def _refuse_nul() -> Any:
    """A NUL in the path, query or headers would reach the database (PostgreSQL refuses it)."""
    query = request.query_string
    if (
        "\x00" in request.path
        or b"%00" in query
        or b"\x00" in query
        or any("\x00" in v for v in request.headers.values())
    ):
        return error_response(
            400,
            type="invalid_request_error",
            code=RequestErrorCode.bad_request,
            message="the request contains a NUL character",
        )
    return None


def register(app: Flask) -> None:
    app.before_request(_refuse_nul)

    @app.errorhandler(DaikonError)
    def _daikon(e: DaikonError) -> Any:
        resp, status = error_response(
            e.status, type=e.type, code=e.code, message=e.message, param=e.param
        )
        retry_after = getattr(e, "retry_after", None)
        if retry_after is not None:
            resp.headers["Retry-After"] = str(retry_after)
        if status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="daikon"'
        return resp, status

    @app.errorhandler(ValidationError)
    def _validation(e: ValidationError) -> Any:
        return validation_error(e)

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException) -> Any:
        status = e.code or 500
        code = (e.name or "error").lower().replace(" ", "_")
        kind = {404: "not_found_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error"
        )
        resp, status = error_response(status, type=kind, code=code, message=e.description or "")
        if status == 405 and e.get_response().headers.get("Allow"):
            resp.headers["Allow"] = e.get_response().headers["Allow"]
        return resp, status

    @app.errorhandler(ParseException)
    def _unreadable_body(e: ParseException) -> Any:
        # gunicorn parses a chunked body as the app reads it: a bad chunk is the client's fault.
        return error_response(
            400,
            type="invalid_request_error",
            code=RequestErrorCode.bad_request,
            message=f"the request body is malformed: {e}",
        )

    @app.errorhandler(OperationalError)
    def _db_down(e: OperationalError) -> Any:
        log.error("database unavailable: %s", e.orig)
        return error_response(
            503,
            type="service_unavailable",
            code=RequestErrorCode.database_unavailable,
            message="the database is unavailable; retry shortly",
        )

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Any:
        log.exception("unhandled error")
        return error_response(
            500,
            type="server_error",
            code=RequestErrorCode.internal_error,
            message="internal server error",
        )
