"""OpenAPI 3.1 for this API, served at `GET /openapi.json` and rendered at `GET /docs`.

Nothing here is written by hand twice: the spec is assembled from the Flask url_map, an
`@operation(...)` note on each view, and the same pydantic models that validate requests and
serialise responses. Bounds that come from settings (image sizes, steps, the model names, ...)
are written into the request schemas for this deployment's settings when the spec is built.

Every route must carry a note (tests/api/test_openapi.py fails otherwise). A new endpoint:

    @bp.get("/models")
    @openapi.operation("List the models", tags=["models"], responses={200: ModelList})
    def list_models() -> Any: ...

What a route can answer follows from the note: `auth="key"` (the default) adds the bearer
scheme with 401 and 503 (authentication reads the database), `auth="admin"` also 403,
`auth=None` makes a public route; a JSON `body` adds 400, 413, 415 and 422; a path parameter
adds 404. Anything else goes in `errors`, with a line saying when.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import metadata
from typing import Any, Literal, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify, url_for
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from api.errors import ErrorResponse
from daikon.errors import RequestErrorCode
from server.requests import for_deployment
from server.settings import Settings

log = logging.getLogger("daikon.api")
REF = "#/components/schemas/{model}"
ATTR = "__openapi__"
SKIP_METHODS = frozenset({"HEAD", "OPTIONS"})  # answered by Flask for every route
View = TypeVar("View", bound=Callable[..., Any])
Auth = Literal["key", "admin"] | None

# Swagger UI 5 (renders OpenAPI 3.1), vendored from the npm package swagger-ui-dist into
# api/static/vendor (scripts/vendor_assets.py): /docs works offline.
SWAGGER_UI = "vendor/swagger-ui-dist"

# When each error status happens, unless a route says more precisely.
ERROR_WHEN: dict[int, str] = {
    400: "`invalid_json`: the body is not valid JSON, or not a JSON object; `bad_request`: a NUL "
    "character in the path, query, headers or body (PostgreSQL stores none).",
    401: "`invalid_api_key`: no API key, or an unknown or revoked one.",
    403: "`forbidden`: this endpoint needs an admin key.",
    404: "`not_found`: nothing here (or it belongs to another tenant).",
    405: "`method_not_allowed`: the path exists but not with this method; `Allow` lists those "
    "that do.",
    409: "`conflict`: the request conflicts with the resource's state.",
    413: "`request_entity_too_large`: the body is larger than DAIKON_MAX_BODY_BYTES.",
    415: "`unsupported_media_type`: the Content-Type is not application/json.",
    422: "`invalid_request`: a field, parameter or header is missing, unknown, of the wrong type "
    "or out of bounds; `param` names the first one.",
    429: "`rate_limited`: too many requests; retry after `Retry-After` seconds.",
    503: "`database_unavailable`: the database cannot be reached; retry shortly.",
}

# Response headers, shared through components/headers.
HEADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ETag": ("The job's version: send it back in `If-None-Match`.", {"type": "string"}),
    "Location": ("The path of the job.", {"type": "string"}),
    "Retry-After": ("Seconds to wait before polling or retrying.", {"type": "integer"}),
    "Cache-Control": ("Caching rules for this response.", {"type": "string"}),
    "Idempotent-Replayed": (
        "`true`: this answers an earlier request with the same `Idempotency-Key`.",
        {"type": "string", "enum": ["true"]},
    ),
    "WWW-Authenticate": ("The authentication scheme: `Bearer`.", {"type": "string"}),
    "Allow": ("The methods this path answers.", {"type": "string"}),
}


@dataclass(frozen=True)
class Link:
    """A value of this response that an operation takes as a path parameter."""

    operation_id: str  # the endpoint name, e.g. "jobs.get_job"
    parameters: Mapping[str, str]  # e.g. {"job_id": "$response.body#/id"}
    description: str = ""


@dataclass(frozen=True)
class Reply:
    """One documented response. `model` for JSON from pydantic; `schema` for anything else;
    `media_type=None` for no body. `headers` maps a name from HEADERS to whether it is always
    sent."""

    description: str
    model: type[BaseModel] | None = None
    media_type: str | None = "application/json"
    schema: Mapping[str, Any] | None = None
    headers: Mapping[str, bool] = field(default_factory=dict)
    links: Mapping[str, Link] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: Mapping[int, Reply]
    tags: tuple[str, ...] = ()
    auth: Auth = "key"
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None  # its fields are the query parameters
    headers: type[BaseModel] | None = None  # its fields (by alias) are the header parameters
    errors: Mapping[int, str] = field(default_factory=dict)
    description: str | None = None
    # A multipart/form-data body besides (or instead of) the JSON one: part name -> schema;
    # a part named after `body` holds that model as JSON (a string part).
    form: Mapping[str, Mapping[str, Any]] | None = None
    form_required: tuple[str, ...] = ()


HIDDEN = Operation(summary="", responses={})


def operation(
    summary: str,
    *,
    responses: Mapping[int, Reply | type[BaseModel]],
    tags: Iterable[str] = (),
    auth: Auth = "key",
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    headers: type[BaseModel] | None = None,
    errors: Iterable[int] | Mapping[int, str] = (),
    description: str | None = None,
    form: Mapping[str, Mapping[str, Any]] | None = None,
    form_required: Iterable[str] = (),
) -> Callable[[View], View]:
    """Document a view. `responses` are the successes (a model stands for a JSON reply);
    `errors` the statuses the note cannot infer, each with a line on when (or a bare status for
    the stock line). The description defaults to the view's docstring."""
    replies = {
        int(status): r if isinstance(r, Reply) else Reply(HTTPStatus(status).phrase, model=r)
        for status, r in responses.items()
    }
    when = dict(errors) if isinstance(errors, Mapping) else {int(s): "" for s in errors}
    op = Operation(
        summary=summary,
        responses=replies,
        tags=tuple(tags),
        auth=auth,
        body=body,
        form=form,
        form_required=tuple(form_required),
        query=query,
        headers=headers,
        errors=when,
        description=description,
    )

    def attach(view: View) -> View:
        setattr(view, ATTR, op)
        return view

    return attach


def hidden(view: View) -> View:
    """Left out of the spec on purpose (the spec and docs routes themselves)."""
    setattr(view, ATTR, HIDDEN)
    return view


def non_null(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an optional property's schema (or the property itself)."""
    for branch in prop.get("anyOf", ()):
        if branch.get("type") != "null":
            return branch  # type: ignore[no-any-return]
    return prop


# --- assembling the spec --------------------------------------------------------------------

_PATH_ARG = re.compile(r"<(?:(?P<conv>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_CONVERTERS: dict[str, dict[str, Any]] = {
    "int": {"type": "integer", "minimum": 0},
    "float": {"type": "number", "minimum": 0},
    "uuid": {"type": "string", "format": "uuid"},
    "path": {"type": "string", "minLength": 1},
    "default": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
}


def openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    """A Flask rule as an OpenAPI path, with its path parameters."""
    params = [
        {
            "name": m["name"],
            "in": "path",
            "required": True,
            "schema": dict(_CONVERTERS.get(m["conv"] or "default", _CONVERTERS["default"])),
        }
        for m in _PATH_ARG.finditer(rule)
    ]
    return _PATH_ARG.sub(lambda m: "{" + m["name"] + "}", rule), params


def documented_routes(app: Flask) -> list[tuple[str, str, str, Operation]]:
    """(rule, method, endpoint, note) for each documented route and method, in path order."""
    found = []
    for rule in app.url_map.iter_rules():
        op = getattr(app.view_functions.get(rule.endpoint), ATTR, None)
        if op is None or op is HIDDEN:
            continue
        for method in sorted((rule.methods or set()) - SKIP_METHODS):
            found.append((rule.rule, method, rule.endpoint, op))
    return sorted(found, key=lambda r: (r[0], r[1]))


def undocumented_routes(app: Flask) -> list[str]:
    """Routes without an `@operation` (nor `@hidden`): each is a gap in the spec."""
    return sorted(
        f"{' '.join(sorted((rule.methods or set()) - SKIP_METHODS))} {rule.rule}"
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        and getattr(app.view_functions.get(rule.endpoint), ATTR, None) is None
    )


def _error_statuses(op: Operation, has_path_params: bool) -> dict[int, str]:
    inferred: set[int] = {400}  # every route refuses NUL characters (api/errors.py)
    if op.auth is not None:
        inferred |= {401, 503}
    if op.auth == "admin":
        inferred.add(403)
    if op.body is not None or op.form is not None:
        inferred |= {400, 413, 415, 422}
    if has_path_params:
        inferred.add(404)
    when = {s: ERROR_WHEN.get(s, HTTPStatus(s).phrase) for s in inferred}
    when.update(
        {s: text or ERROR_WHEN.get(s, HTTPStatus(s).phrase) for s, text in op.errors.items()}
    )
    return dict(sorted(when.items()))


def _header_refs(headers: Mapping[str, bool]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, always in headers.items():
        ref = {"$ref": f"#/components/headers/{name}"}
        # A reference takes no siblings in 3.1 headers: a header sent always is inlined.
        out[name] = {**_header(name), "required": True} if always else ref
    return out


def _header(name: str) -> dict[str, Any]:
    description, schema = HEADERS[name]
    return {"description": description, "schema": schema}


def _models(
    routes: list[tuple[str, str, str, Operation]], settings: Settings
) -> list[tuple[type[BaseModel], Any]]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorResponse, "serialization")]
    for *_, op in routes:
        for model in (op.body, op.query, op.headers):
            if model is not None:
                wanted.append((for_deployment(model, settings), "validation"))
        wanted.extend((r.model, "serialization") for r in op.responses.values() if r.model)
    return list(dict.fromkeys(wanted))


def _parameters(
    model: type[BaseModel] | None, where: str, schemas: dict[str, Any], refs: dict[Any, Any]
) -> list[dict[str, Any]]:
    """One parameter per field of a query or header model, named by its alias."""
    if model is None:
        return []
    schema = schemas[refs[model, "validation"]["$ref"].rsplit("/", 1)[1]]
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema["properties"].items():
        value = {k: v for k, v in non_null(prop).items() if k not in ("title", "description")}
        if "default" in prop and prop["default"] is not None:
            value["default"] = prop["default"]
        out.append(
            {
                "name": name,
                "in": where,
                "required": name in required,
                "schema": value,
                **({"description": prop["description"]} if "description" in prop else {}),
            }
        )
    return out


def build_spec(app: Flask) -> dict[str, Any]:
    settings: Settings = app.extensions["daikon"].settings
    routes = documented_routes(app)
    for gap in undocumented_routes(app):
        log.warning("route %s has no @openapi.operation: it is missing from the spec", gap)
    refs, defs = models_json_schema(_models(routes, settings), ref_template=REF)
    schemas: dict[str, Any] = defs.get("$defs", {})
    error_ref = refs[ErrorResponse, "serialization"]
    # Query and header models are spelled out as parameters, not kept as schemas.
    spelled_out = {
        for_deployment(m, settings)
        for *_, op in routes
        for m in (op.query, op.headers)
        if m is not None
    }

    paths: dict[str, dict[str, Any]] = {}
    for rule, method, endpoint, op in routes:
        path, path_params = openapi_path(rule)
        view = app.view_functions[endpoint]
        methods = [m for r, m, e, _ in routes if e == endpoint and r == rule]
        out: dict[str, Any] = {
            "operationId": endpoint if len(methods) == 1 else f"{endpoint}.{method.lower()}",
            "summary": op.summary,
        }
        description = op.description or inspect.getdoc(view)
        if description:
            out["description"] = description
        if op.tags:
            out["tags"] = list(op.tags)
        params = [
            *path_params,
            *_parameters(op.query and for_deployment(op.query, settings), "query", schemas, refs),
            *_parameters(
                op.headers and for_deployment(op.headers, settings), "header", schemas, refs
            ),
        ]
        if params:
            out["parameters"] = params
        content: dict[str, Any] = {}
        if op.body is not None:
            content["application/json"] = {
                "schema": refs[for_deployment(op.body, settings), "validation"]
            }
        if op.form is not None:
            form: dict[str, Any] = {"type": "object", "properties": dict(op.form)}
            if op.form_required:
                form["required"] = list(op.form_required)
            content["multipart/form-data"] = {"schema": form}
        if content:
            out["requestBody"] = {"required": True, "content": content}
        responses: dict[str, Any] = {}
        for status, reply in sorted(op.responses.items()):
            item: dict[str, Any] = {"description": reply.description}
            if reply.headers:
                item["headers"] = _header_refs(reply.headers)
            if reply.media_type is not None:
                schema = (
                    refs[reply.model, "serialization"]
                    if reply.model is not None
                    else dict(reply.schema or {})
                )
                item["content"] = {reply.media_type: {"schema": schema}}
            if reply.links:
                item["links"] = {
                    name: {
                        "operationId": link.operation_id,
                        "parameters": dict(link.parameters),
                        **({"description": link.description} if link.description else {}),
                    }
                    for name, link in reply.links.items()
                }
            responses[str(status)] = item
        for status, when in _error_statuses(op, bool(path_params)).items():
            item = {"description": when, "content": {"application/json": {"schema": error_ref}}}
            if status == 401:
                item["headers"] = _header_refs({"WWW-Authenticate": True})
            elif status == 429:
                item["headers"] = _header_refs({"Retry-After": True})
            responses[str(status)] = item
        out["responses"] = responses
        out["security"] = [{"bearerAuth": []}] if op.auth is not None else []
        paths.setdefault(path, {})[method.lower()] = out

    for model in spelled_out:
        schemas.pop(refs[model, "validation"]["$ref"].rsplit("/", 1)[1], None)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Daikon",
            "version": _version(),
            "description": INFO,
        },
        **(
            {"servers": [{"url": settings.services.public_url}]}
            if settings.services.public_url
            else {}
        ),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "headers": {name: _header(name) for name in HEADERS},
            "responses": {
                "MethodNotAllowed": {
                    "description": ERROR_WHEN[405],
                    "headers": _header_refs({"Allow": True}),
                    "content": {"application/json": {"schema": error_ref}},
                }
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A tenant's API key, or the deployment's DAIKON_ADMIN_KEY.",
                }
            },
            "x-error-codes": error_codes(),
        },
        "security": [{"bearerAuth": []}],
    }


INFO = """Asynchronous text-to-image jobs: submit a job, then poll it, stream its events, or
receive webhooks; finished jobs carry CLIP-ranked images.

Every error, whatever the status, has one shape: `ErrorResponse`,
`{"error": {"type", "code", "message", "param"}}`. A path that exists but not with the method
used answers `405` with an `Allow` header (`#/components/responses/MethodNotAllowed`); an
unknown path answers `404`.

The bounds in the request schemas are this deployment's settings."""


def error_codes() -> dict[str, dict[str, Any]]:
    """Every request error `code` with its status and when (the registry in daikon/errors.py):
    an extension of the spec's components, so a client can list the codes it may be answered
    with."""
    return {c.value: {"status": c.status, "description": c.meaning} for c in RequestErrorCode}


def _version() -> str:
    try:
        return metadata.version("daikon")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def spec(app: Flask) -> dict[str, Any]:
    """The spec of `app`: built again only when the models' published capabilities changed
    (settings are frozen and routes fixed by then), so its description shows what each model
    can do once a worker has loaded it."""
    svc = app.extensions["daikon"]
    served = {m: svc.served_models.get(m) for m in svc.settings.model_specs}
    key = json.dumps(
        {
            m: s.capabilities.model_dump(mode="json") if s and s.capabilities else None
            for m, s in served.items()
        },
        sort_keys=True,
    )
    cached: tuple[str, dict[str, Any]] | None = app.extensions.get("daikon.openapi")
    if cached is None or cached[0] != key:
        built = build_spec(app)
        built["info"]["description"] += _models_description(served)
        cached = app.extensions["daikon.openapi"] = (key, built)
    return cached[1]


def _models_description(served: Mapping[str, Any]) -> str:
    lines = ["", "", "Models (GET /v1/models has their full capabilities and limits):"]
    for name, info in served.items():
        caps = info.capabilities if info is not None else None
        if caps is None:
            lines.append(f"- `{name}`: not loaded by any worker yet (its worker checks jobs).")
            continue
        d = caps.defaults
        lines.append(
            f"- `{name}`: {caps.family} ({caps.pipeline_class}); sides a multiple of "
            f"{caps.size_multiple}; guidance {caps.guidance}; negative prompt "
            f"{'yes' if caps.supports_negative_prompt else 'no'}; schedulers "
            f"{', '.join(caps.schedulers)}; defaults {d.width}x{d.height}, {d.steps} steps, "
            f"guidance {d.guidance_scale}."
        )
    return "\n".join(lines)


# --- routes ---------------------------------------------------------------------------------

bp = Blueprint("openapi", __name__)

DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Daikon API</title>
<link rel="stylesheet" href="{css}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{js}"></script>
<script>
window.ui = SwaggerUIBundle({{url: "{spec_url}", dom_id: "#swagger-ui", deepLinking: true}});
</script>
</body>
</html>
"""


@bp.get("/openapi.json")
@hidden
def openapi_json() -> Response:
    return jsonify(spec(current_app))


@bp.get("/docs")
@hidden
def docs() -> Response:
    page = DOCS_PAGE.format(
        css=url_for("static", filename=f"{SWAGGER_UI}/swagger-ui.css"),
        js=url_for("static", filename=f"{SWAGGER_UI}/swagger-ui-bundle.js"),
        spec_url=url_for("openapi.openapi_json"),
    )
    return Response(page, mimetype="text/html")
