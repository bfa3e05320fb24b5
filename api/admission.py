"""Admission: what the server decides from a request's head alone, before it waits for the
body (api/gunicorn_worker.py asks once the head is in and the body is not).

A body is only worth receiving if the request could succeed: so, before a byte of it is waited
for, the route's size limit is applied to the declared Content-Length (413: an upload's when
the route takes uploads and the body is multipart, else DAIKON_MAX_BODY_BYTES), and for the
routes that take uploads the caller's key (401) and the tenant's submission limits (429: the
rate of submissions, the active jobs) are checked. Refusals are whole HTTP answers in the API's one
JSON error shape, sent at once; the connection is then closed without reading the rest.

Nothing here consumes a limit: a request let in counts against them as any other, when the
route runs.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from api import inputs
from api.auth import authenticate
from api.services import services
from api.submission import check_room
from daikon.errors import PayloadTooLarge, RequestErrorCode, ServiceUnavailable
from daikon.resources import ErrorBody, ErrorResponse
from server.settings import Settings


@dataclass(frozen=True)
class Decision:
    refusal: bytes | None = None  # a whole HTTP answer: send it and close
    body_limit: int | None = None  # else the largest body the route takes


def answer(status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    skip = ("connection", "content-length")
    lines += [f"{k}: {v}" for k, v in headers or [] if k.lower() not in skip]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def error(
    status: int, *, code: RequestErrorCode, message: str, type: str = "invalid_request_error"
) -> bytes:
    body = ErrorResponse(error=ErrorBody(type=type, code=code, message=message, param=None))
    data = json.dumps(body.model_dump(mode="json"), separators=(",", ":")).encode()
    return answer(status, data, [("Content-Type", "application/json")])


def malformed(reason: str, status: int = 400) -> bytes:
    return error(
        status, code=RequestErrorCode.bad_request, message=f"the request cannot be read: {reason}"
    )


def too_large(limit: int) -> bytes:
    e = PayloadTooLarge(
        f"the request body is larger than this route's {limit} bytes",
        code=RequestErrorCode.request_entity_too_large,
    )
    return error(e.status, code=e.code, message=e.message)


def busy() -> bytes:
    e = ServiceUnavailable(
        "the server is receiving as many request bodies as it holds; retry shortly",
        code=RequestErrorCode.server_busy,
    )
    return error(e.status, code=e.code, message=e.message, type=e.type)


def largest_body(settings: Settings) -> int:
    """The largest body any route takes."""
    return max(settings.api.max_body_bytes, inputs.upload_request_bytes(settings))


def for_app(wsgi: Any) -> Callable[[dict[str, Any]], Decision]:
    """The admission check for gunicorn's app (the Flask app create_app built)."""
    if not isinstance(wsgi, Flask):
        return lambda environ: Decision()
    return lambda environ: decide(wsgi, environ)


def decide(app: Flask, environ: dict[str, Any]) -> Decision:
    """From the head alone: refuse now, or the body's limit for this route."""
    environ = {**environ, "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO()}
    with app.request_context(environ) as ctx:
        svc = services()
        limit = svc.settings.api.max_body_bytes
        try:
            rule, _ = ctx.url_adapter.match(return_rule=True)  # type: ignore[union-attr]
            endpoint = rule.endpoint
        except HTTPException:
            endpoint = None  # answered 404 or 405 by the app, once its (small) body is in
        upload = endpoint is not None and inputs.takes_uploads(app.view_functions[endpoint])
        if upload and ctx.request.mimetype == "multipart/form-data":
            limit = inputs.upload_request_bytes(svc.settings)
        declared = ctx.request.content_length
        if declared is not None and declared > limit:
            return Decision(refusal=too_large(limit))
        if not upload:
            return Decision(body_limit=limit)
        try:
            check_room(svc, authenticate())
        except Exception as e:  # answered as the route would (a 503 while the database is down)
            try:
                handled = app.handle_user_exception(e)
            except Exception:  # no handler: the route meets it again once the body is in
                return Decision(body_limit=limit)
            response = app.make_response(handled)
            refusal = answer(
                response.status_code, response.get_data(), list(response.headers.items())
            )
            return Decision(refusal=refusal)
        return Decision(body_limit=limit)
