"""The HTTP edge on a real database and Redis: what gets queued, and what bad input leaves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from db import jobs
from db.session import session_scope
from server.settings import Settings
from tests.apps import job_count, queued_job_ids, queued_messages
from tests.conftest import ADMIN_KEY, AUTH
from tests.stack import free_port, migrate

VALID = {"prompt": "a red circle", "steps": 4, "candidates": 2, "top_k": 1, "seed": 3}


@pytest.fixture
def app(make_app) -> Flask:  # type: ignore[no-untyped-def]
    return make_app(max_body_bytes=4096)


def test_submit_commits_a_row_queues_its_id_and_answers_202(
    app: Flask, client: FlaskClient, redis_client: redis.Redis, queue_name: str
) -> None:
    r = client.post("/v1/jobs", json=VALID)
    assert r.status_code == 202
    job = r.get_json()
    assert r.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["images"] == [] and job["error"] is None
    defaults = {
        "negative_prompt": None,
        "width": 32,
        "height": 32,
        "guidance_scale": 7.5,
        "model": "default",
        "scheduler": None,
        "true_cfg_scale": None,
        "mode": "text",
        "strength": None,
        "mask_blur": None,
        "temperature": None,
        "top_p": None,
        "top_k_tokens": None,
        "defaulted": ["width", "height", "guidance_scale"],
    }
    assert job["params"] == {**VALID, **defaults}
    assert job["priority"] == 5 and job["queue_position"] == 0 and job["progress"] is None
    assert job_count(app) == 1
    # Default priority 5 goes out as the Redis transport's level 9 - 5 = 4, on the model's queue.
    assert queued_messages(redis_client, queue_name) == [(f"{queue_name}.default:4", job["id"], 4)]
    got = client.get(f"/v1/jobs/{job['id']}")
    assert got.status_code == 200 and got.get_json() == job


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"steps": 4}, "prompt", "prompt: is required"),
        ({**VALID, "width": 100}, "width", "width: must be a multiple of 8"),
        ({**VALID, "top_k": 5}, "top_k", "top_k: must not exceed candidates (2)"),
        ({**VALID, "guidance_scale": "high"}, "guidance_scale", "guidance_scale: Input should be"),
        ({**VALID, "webhook": "http://x"}, "webhook", "webhook: unknown field"),
    ],
)
def test_a_bad_body_gets_422_naming_the_field_and_leaves_nothing(  # type: ignore[no-untyped-def]
    app, client, redis_client, queue_name, body: dict[str, Any], param: str, fragment: str
) -> None:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422
    err = r.get_json()["error"]
    assert (err["type"], err["code"], err["param"]) == (
        "invalid_request_error",
        "invalid_request",
        param,
    )
    assert fragment in err["message"]
    assert job_count(app) == 0 and queued_job_ids(redis_client, queue_name) == []


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"data": "prompt=x", "content_type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
        ({"data": "{not json", "content_type": "application/json"}, 400, "invalid_json"),
        ({"data": "[1, 2]", "content_type": "application/json"}, 400, "invalid_json"),
        ({"json": {"prompt": "x" * 5000}}, 413, "request_entity_too_large"),
    ],
)
def test_unreadable_bodies_get_json_errors(  # type: ignore[no-untyped-def]
    app, client, kwargs: dict[str, Any], status: int, code: str
) -> None:
    r = client.post("/v1/jobs", **kwargs)
    assert r.status_code == status and r.is_json
    assert r.get_json()["error"]["code"] == code
    assert job_count(app) == 0


def test_unknown_routes_methods_and_jobs_answer_json(client: FlaskClient) -> None:
    r = client.get("/v1/jobs/does-not-exist")
    assert r.status_code == 404
    assert r.get_json()["error"] == {
        "type": "not_found_error",
        "code": "not_found",
        "message": "job 'does-not-exist' not found",
        "param": "id",
    }
    r = client.get("/no/such/route")
    assert r.status_code == 404
    assert (r.get_json()["error"]["type"], r.get_json()["error"]["code"]) == (
        "not_found_error",
        "not_found",
    )
    r = client.delete("/v1/jobs")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"
    assert set(r.headers["Allow"].split(", ")) >= {"GET", "POST"}
    r = client.get("/v1/jobs/x/images/1")
    assert r.status_code == 404 and r.is_json


@pytest.mark.parametrize("limit", ["0", "101", "abc", "-1"])
def test_list_limit_is_bounded(client: FlaskClient, limit: str) -> None:
    r = client.get(f"/v1/jobs?limit={limit}")
    assert r.status_code == 422
    assert r.get_json()["error"]["param"] == "limit"


def test_list_is_newest_first(client: FlaskClient) -> None:
    ids = [
        client.post("/v1/jobs", json={**VALID, "prompt": f"p{i}"}).get_json()["id"]
        for i in range(3)
    ]
    listed = [j["id"] for j in client.get("/v1/jobs?limit=2").get_json()["jobs"]]
    assert listed == [ids[2], ids[1]]


def test_broker_down_answers_503_and_creates_nothing(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'down.db'}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        admin_key=ADMIN_KEY,
    )
    migrate(settings.sqlalchemy_url)
    app = create_app(settings)
    r = app.test_client().post("/v1/jobs", json=VALID, headers=AUTH)
    assert r.status_code == 503
    assert r.get_json()["error"]["code"] == "queue_unavailable"
    assert job_count(app) == 0


def test_a_worker_chosen_seed_of_zero_is_shown_as_zero(app: Flask, client: FlaskClient) -> None:
    job_id = client.post("/v1/jobs", json={**VALID, "seed": None}).get_json()["id"]
    with session_scope(app.extensions["daikon"].sessions) as s:
        jobs.claim(session=s, job_id=job_id, worker="w")
        jobs.succeed(session=s, job_id=job_id, seed=0, images=[], metrics={})
    assert client.get(f"/v1/jobs/{job_id}").get_json()["params"]["seed"] == 0


def test_the_api_starts_and_answers_while_s3_is_unreachable(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 's3down.db'}",
        s3_bucket="b",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        admin_key=ADMIN_KEY,
    )
    migrate(settings.sqlalchemy_url)
    client = create_app(settings).test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/jobs", headers=AUTH).get_json()["jobs"] == []


def test_healthz(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/jobs", {**VALID, "prompt": "a red\u0000circle"}),
        ("post", "/v1/jobs", {**VALID, "metadata": {"note\u0000": "x"}}),
        ("get", "/v1/jobs/abc%00def", None),
        ("get", "/v1/jobs?model=a%00b", None),
    ],
)
def test_nul_characters_are_refused_before_they_reach_postgresql(  # type: ignore[no-untyped-def]
    make_app, postgres_url, method: str, path: str, body: dict[str, Any] | None
) -> None:
    app = make_app(database_url=postgres_url)
    c = app.test_client()
    r = getattr(c, method)(path, json=body, headers=AUTH)
    assert r.status_code == 400, r.get_json()
    assert "NUL character" in r.get_json()["error"]["message"]
    assert c.get("/v1/jobs", headers=AUTH).status_code == 200
