"""The OpenAPI spec: valid 3.1, complete (every route documented), carrying the settings' bounds,
and true: schemathesis fuzzes the real app from the served spec (real SQLite and Redis, a queue
of the test's own, no worker) and every answer must be documented and match its schema."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from api import create_app
from api.openapi import SKIP_METHODS, undocumented_routes
from db.models import Base
from db.session import session_scope
from server.settings import ModelSpec, Settings
from tests.stack import ROOT, migrate

ADMIN_KEY = "dk_test_admin"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    unsupported_method,  # an undocumented method answers 405 with Allow
    allow_header_conformance,
]
# Deterministic (the same cases every run) and bounded: about 30 s for the file on 2 cores.
FUZZ = settings(
    derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)


def make_app(tmp_path: Path, redis_url: str, queue_name: str, **overrides: Any) -> Flask:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        redis_url=redis_url,
        queue=queue_name,
        max_body_bytes=4096,
        admin_key=ADMIN_KEY,
        event_stream_max_seconds=5,
        openai_wait_seconds=0,
        **overrides,
    )
    migrate(settings.sqlalchemy_url)
    return create_app(settings)


@pytest.fixture
def app(tmp_path: Path, redis_url: str, queue_name: str) -> Flask:
    return make_app(tmp_path, redis_url, queue_name)


def served_spec(app: Flask) -> dict[str, Any]:
    r = app.test_client().get("/openapi.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    spec: dict[str, Any] = r.get_json()
    return spec


# --- the spec itself ------------------------------------------------------------------------


def test_the_served_spec_is_valid_openapi_3_1(app: Flask) -> None:
    spec = served_spec(app)
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # openapi-spec-validator picks the 3.1 rules from the version


def test_every_route_is_documented(app: Flask) -> None:
    """A new endpoint without `@openapi.operation(...)` fails here: decorate it."""
    assert undocumented_routes(app) == []
    spec = served_spec(app)
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "openapi.openapi_json", "openapi.docs"):
            continue
        if rule.endpoint.startswith("dashboard."):  # HTML pages for people (docs/dashboard.md)
            assert rule.rule.startswith("/admin/")
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - SKIP_METHODS:
            assert method.lower() in spec["paths"].get(path, {}), f"{method} {path}"


def test_an_undecorated_route_is_reported(app: Flask) -> None:
    app.add_url_rule("/v1/forgotten", "forgotten", lambda: "x", methods=["GET", "POST"])
    assert undocumented_routes(app) == ["GET POST /v1/forgotten"]


def test_every_operation_documents_its_errors_with_the_one_error_schema(app: Flask) -> None:
    spec = served_spec(app)
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    seen: set[str] = set()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            seen |= codes
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")):
                    assert response["content"] == {"application/json": {"schema": error_ref}}
            if op["security"]:
                assert {"401", "503"} <= codes, f"{method} {path}"
            if op.get("requestBody"):
                assert {"400", "413", "415", "422"} <= codes, f"{method} {path}"
            if "{" in path:
                assert "404" in codes, f"{method} {path}"
    assert {"304", "400", "401", "403", "404", "409", "413", "415", "422", "429", "503"} <= seen
    assert "MethodNotAllowed" in spec["components"]["responses"]
    events = spec["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    image = spec["paths"]["/v1/jobs/{job_id}/images/{rank}"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"] and list(image) == ["image/png"]
    names = {p["name"] for p in spec["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert names == {"status", "model", "created_after", "limit", "cursor"}
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_the_job_request_schema_carries_the_settings_bounds(
    tmp_path: Path, redis_url: str, queue_name: str
) -> None:
    def job_request(**overrides: Any) -> dict[str, Any]:
        app = make_app(
            tmp_path / str(len(list(tmp_path.iterdir()))), redis_url, queue_name, **overrides
        )
        schema: dict[str, Any] = served_spec(app)["components"]["schemas"]["JobRequest"]
        return {name: prop.get("anyOf", [prop])[0] for name, prop in schema["properties"].items()}

    shipped = job_request()
    assert shipped["width"] == {"type": "integer", "minimum": 32, "maximum": 1024, "multipleOf": 8}
    assert (shipped["steps"]["minimum"], shipped["steps"]["maximum"]) == (1, 150)
    assert shipped["priority"] | {} == {"type": "integer", "minimum": 0, "maximum": 9}
    assert shipped["seed"]["maximum"] == 2**32 - 1
    assert shipped["prompt"]["maxLength"] == 2000
    assert shipped["model"]["enum"] == ["default", "shapes-ar"]  # the embedded two
    assert {"euler_a", "EulerAncestralDiscreteScheduler"} <= set(shipped["scheduler"]["enum"])

    changed = job_request(
        min_size=64,
        max_size=512,
        max_steps=40,
        max_guidance_scale=12.0,
        max_candidates=8,
        max_prompt_chars=300,
        default_width=128,
        default_height=128,
        models={"sd15": ModelSpec(pipeline="p1"), "sdxl": ModelSpec(pipeline="p2")},
    )
    assert (changed["width"]["minimum"], changed["width"]["maximum"]) == (64, 512)
    assert (changed["height"]["minimum"], changed["height"]["maximum"]) == (64, 512)
    assert changed["steps"]["maximum"] == 40
    assert changed["guidance_scale"]["maximum"] == 12.0
    assert changed["candidates"]["maximum"] == changed["top_k"]["maximum"] == 8
    assert changed["prompt"]["maxLength"] == changed["negative_prompt"]["maxLength"] == 300
    assert changed["model"]["enum"] == ["sd15", "sdxl"]


def test_the_docs_page_renders_the_served_spec(app: Flask) -> None:
    r = app.test_client().get("/docs")
    assert r.status_code == 200 and r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    assert 'url: "/openapi.json"' in page and "SwaggerUIBundle" in page
    # Offline: every asset is served by the API itself, the bytes vendored from npm.
    assets = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert assets and not [a for a in assets if "//" in a]
    vendored = {"swagger-ui-bundle.js": "javascript", "swagger-ui.css": "text/css"}
    for asset in assets:
        served = app.test_client().get(asset)
        name = asset.rsplit("/", 1)[1]
        assert served.status_code == 200 and vendored[name] in served.content_type
        assert served.data == (ROOT / "api/static/vendor/swagger-ui-dist" / name).read_bytes()


def test_every_secured_operation_refuses_a_missing_key(app: Flask) -> None:
    client = app.test_client()
    for path, item in served_spec(app)["paths"].items():
        url = re.sub(r"{[^}]+}", "1", path)
        for method, op in item.items():
            r = client.open(url, method=method.upper(), json={})
            if op["security"]:
                assert r.status_code == 401, f"{method} {path}"
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            else:  # open routes; readiness is 503 here, where no worker runs
                assert r.status_code in ((200, 503) if path == "/readyz" else (200, 404)), path


# --- what the fuzzing (and probing around it) found: each was a 500 -----------------------


def test_webhook_events_that_are_not_strings_are_a_422(client: Any) -> None:
    r = client.post("/v1/jobs", json={"prompt": "x", "webhook_events": [{}]})
    assert r.status_code == 422 and r.get_json()["error"]["param"] == "webhook_events"


def test_a_non_ascii_key_is_refused_like_any_wrong_key(app: Flask) -> None:
    r = app.test_client().get("/v1/jobs", headers={"Authorization": "Bearer d\u00e9j\u00e0"})
    assert r.status_code == 401


@pytest.mark.parametrize("query", ["expires=9999999999&sig=%C3%A9", "expires=%C2%B2&sig=x"])
def test_odd_image_signatures_are_a_404(app: Flask, query: str) -> None:
    r = app.test_client().get(f"/v1/jobs/x/images/1?{query}")
    assert r.status_code == 404 and r.is_json


def test_unicode_digits_are_not_numbers(client: Any) -> None:
    # "²".isdigit() is True, but int("²") raises.
    assert client.get("/v1/jobs?limit=%C2%B2").status_code == 422
    job_id = client.post("/v1/jobs", json={"prompt": "x"}).get_json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")
    r = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "\u00b2"})
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    assert "event: done" in r.get_data(as_text=True)


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 2000 + "]" * 2000,
        '{"prompt": "x", "metadata": {"a": NaN}}',
        '{"prompt": "x", "guidance_scale": Infinity}',
    ],
)
def test_bodies_that_python_but_not_json_accepts_are_a_400(client: Any, raw: str) -> None:
    r = client.post("/v1/jobs", data=raw, content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    "query",
    [
        "created_after=0001-01-01T00:00:00%2B01:00",  # before year 1 in UTC
        "created_after=9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
        "cursor=" + base64.urlsafe_b64encode(b'["2026-01-01T00:00:00", "x"]').decode(),  # naive
    ],
)
def test_times_out_of_range_or_without_a_zone_are_a_422(client: Any, query: str) -> None:
    r = client.get(f"/v1/jobs?{query}")
    assert r.status_code == 422 and r.get_json()["error"]["param"] == query.split("=")[0]


# --- fuzzing --------------------------------------------------------------------------------


@pytest.fixture
def api_schema(request: pytest.FixtureRequest, app: Flask) -> Any:
    # schemathesis 4.32's fixture-based schemas read `item._nodeid`, which pytest 9.2 no longer
    # has (it became `_id`); the public `nodeid` is the same string.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


# No worker runs here: readiness must say 503, and every valid OpenAI-route call must end in
# its documented 504 (openai_wait_seconds=0). Any other 5xx, a 500 above all, is a failure.
BY_DESIGN_5XX = {
    "/readyz": {503},
    "/v1/images/generations": {504},
    "/v1/images/edits": {504},
    "/v1/images/variations": {504},
}


@schema.parametrize()
@settings(FUZZ, max_examples=100)
def test_the_api_keeps_to_its_spec(case: schemathesis.Case) -> None:
    expected_5xx = BY_DESIGN_5XX.get(case.operation.path)
    if expected_5xx is None:
        case.call_and_validate(headers=AUTH, checks=CHECKS)
        return
    # Keep every check but "no 5xx" for these, and allow only the documented 5xx.
    response = case.call(headers=AUTH)
    case.validate_response(
        response, headers=AUTH, checks=[c for c in CHECKS if c is not not_a_server_error]
    )
    assert response.status_code < 500 or response.status_code in expected_5xx, response.text


def test_workflows_keep_to_the_spec(app: Flask) -> None:
    """Sequences along the spec's links (submit, then get or cancel that job; create a tenant,
    then a key, then revoke it), so the fuzzing reaches real resources, not only 404s."""
    # The events link stays out: a live job's stream is held open for seconds.
    api = schemathesis.openapi.from_wsgi("/openapi.json", app).exclude(
        operation_id="events.job_events"
    )

    class Workflow(api.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each scenario starts empty, or a replayed one would meet its own earlier tenants
            # (409) and Hypothesis would call the generation flaky.
            with session_scope(app.extensions["daikon"].sessions) as session:
                for table in reversed(Base.metadata.sorted_tables):
                    session.execute(table.delete())
            # Rows deleted behind the API's back (keys, the admin's tenant): as after a revocation.
            app.extensions["daikon"].keys.invalidate_everywhere()

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"headers": AUTH}

        def validate_response(  # type: ignore[override]
            self, response: schemathesis.Response, case: schemathesis.Case, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=CHECKS, headers=AUTH)

    Workflow.run(settings=settings(FUZZ, max_examples=100, stateful_step_count=6))
