"""Reading requests: bodies (the bytes within the size limit, then strictly JSON), and the
query string and headers into their contract models (daikon/contract.py).

Everything a body may carry that the database or a later step would choke on is refused here,
with a 400 naming the problem, before any validation recurses into it or anything is written:
nesting deeper than MAX_JSON_DEPTH, NaN/Infinity (also as an overflowing number such as
1e400), NUL characters (PostgreSQL stores none) and text that is not Unicode scalar values
(a lone surrogate such as \\ud800, which no database or UTF-8 encoder accepts).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

from flask import Request as FlaskRequest
from flask import current_app, g, request
from pydantic import BaseModel
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser, MultiPartParser

from daikon.errors import BadRequest, RequestErrorCode, UnsupportedMediaType

# Deep enough for any metadata a client means to store; shallow enough that no parser,
# validator or serialiser downstream comes near Python's recursion limit.
MAX_JSON_DEPTH = 64

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")


def read_body() -> bytes:
    """The raw body, at most MAX_CONTENT_LENGTH bytes (413 beyond), read once per request.

    A chunked body has no Content-Length for werkzeug to check, and its limited stream stops
    quietly at the limit: read one byte past it ourselves so an oversized body is a 413, not a
    truncated (and so invalid) one."""
    cached: bytes | None = g.get("daikon_body")
    if cached is not None:
        return cached
    limit: int = current_app.config["MAX_CONTENT_LENGTH"]
    try:
        if request.content_length is None and "wsgi.input_terminated" in request.environ:
            data: bytes = request.environ["wsgi.input"].read(limit + 1)
            if len(data) > limit:
                raise RequestEntityTooLarge()
        else:
            data = request.get_data(cache=True)
    except ClientDisconnected:
        raise BadRequest("the request body ended before it was complete") from None
    g.daikon_body = data
    return data


# What the multipart parser reads at a time. werkzeug applies the form-memory cap (the JSON part's
# limit, DAIKON_MAX_BODY_BYTES) to its parse buffer plus each read, so each read must be well
# under the cap, or an ordinary file part is refused as too large (413) depending on where its
# bytes happen to fall.
MULTIPART_READ_BYTES = 8 * 1024


class _FormDataParser(FormDataParser):
    def _parse_multipart(
        self, stream: Any, mimetype: str, content_length: int | None, options: dict[str, str]
    ) -> Any:
        parser = MultiPartParser(
            stream_factory=self.stream_factory,
            max_form_memory_size=self.max_form_memory_size,
            max_form_parts=self.max_form_parts,
            cls=self.cls,
            buffer_size=MULTIPART_READ_BYTES,
        )
        boundary = options.get("boundary", "").encode("ascii")
        if not boundary:
            raise ValueError("Missing boundary")
        form, files = parser.parse(stream, boundary, content_length)
        return stream, form, files


class Request(FlaskRequest):
    """Flask's request, with a multipart parser whose reads fit the form-memory cap."""

    form_data_parser_class = _FormDataParser


def _refuse_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to inf: JSON has no such number
        raise ValueError(f"{text} is out of range for a JSON number")
    return value


def _too_deep(data: bytes) -> bool:
    """Nesting depth from the brackets outside strings, without recursion."""
    depth = 0
    for byte in _NOT_BRACKET.sub(b"", _STRING.sub(b"", data)):
        depth += 1 if byte in b"[{" else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character (\\u0000)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"text that is not valid Unicode (a lone surrogate \\u{ord(text[e.start]):04x})"
    return None


def check_text(value: Any) -> str | None:
    """What is wrong with the strings anywhere in `value` (keys too), or None. Iterative: the
    depth was bounded before, but a stack costs nothing."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            problem = _bad_text(item)
            if problem:
                return problem
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def json_body() -> dict[str, Any]:
    """The body as a JSON object, or a 400/413/415 that names what is wrong with it."""
    if not request.is_json:
        raise UnsupportedMediaType("Content-Type must be application/json")
    data = read_body()
    if _too_deep(data):
        raise BadRequest(
            f"request body is nested deeper than {MAX_JSON_DEPTH} levels",
            code=RequestErrorCode.invalid_json,
        )
    try:
        body = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite)
    except (ValueError, RecursionError):
        raise BadRequest(
            "request body is not valid JSON", code=RequestErrorCode.invalid_json
        ) from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code=RequestErrorCode.invalid_json)
    problem = check_text(body)
    if problem:
        raise BadRequest(f"request body contains {problem}", code=RequestErrorCode.invalid_json)
    return body


M = TypeVar("M", bound=BaseModel)


def query_params(model: type[M]) -> M:
    """The query string as `model` (a repeated parameter counts once, its first value);
    a bad or unknown parameter is a 422 naming it."""
    return model.model_validate(request.args.to_dict())


def header_params(model: type[M]) -> M:
    """The headers `model` names (by alias), validated: a bad one is a 422 naming it."""
    names = [f.alias or n for n, f in model.model_fields.items()]
    given = {name: request.headers[name] for name in names if name in request.headers}
    return model.model_validate(given)  # header names are case-insensitive
