"""/v1/jobs: submit, read, list, and (for the local store) serve the kept images."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, request, url_for

from api.serialize import job_out
from api.services import services
from daikon.contract import TASK_GENERATE, JobList, JobRequest
from daikon.errors import (
    BadRequest,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from db import jobs
from db.session import session_scope

log = logging.getLogger("daikon.api")
bp = Blueprint("jobs", __name__, url_prefix="/v1")


def json_body() -> dict[str, Any]:
    if not request.is_json:
        raise UnsupportedMediaType("Content-Type must be application/json")
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("request body is not valid JSON", code="invalid_json")
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return body


@bp.post("/jobs")
def create_job() -> Any:
    svc = services()
    req = JobRequest.model_validate(json_body(), context={"settings": svc.settings})
    params = req.resolve(svc.settings)
    with session_scope(svc.sessions) as session:
        job = jobs.create(session=session, params=params)
        body = job_out(job).model_dump(mode="json")
    # Published after the commit so the worker always finds the row.
    try:
        svc.celery.send_task(TASK_GENERATE, args=[job.id], queue=svc.settings.queue)
    except Exception as e:
        log.error("enqueue of job %s failed: %s", job.id, e)
        with session_scope(svc.sessions) as session:
            jobs.delete(session=session, job_id=job.id)
        raise ServiceUnavailable(
            "the job queue is unavailable; nothing was created, retry shortly",
            code="queue_unavailable",
        ) from e
    return body, 202, {"Location": url_for("jobs.get_job", job_id=job.id)}


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Any:
    svc = services()
    with session_scope(svc.sessions) as session:
        job = jobs.get(session=session, job_id=job_id)
        return job_out(job).model_dump(mode="json")


@bp.get("/jobs")
def list_jobs() -> Any:
    svc = services()
    raw = request.args.get("limit", "20")
    limit_max = svc.settings.list_limit_max
    if not raw.isdigit() or not (1 <= int(raw) <= limit_max):
        raise InvalidRequest(f"limit must be an integer between 1 and {limit_max}", param="limit")
    with session_scope(svc.sessions) as session:
        rows = jobs.list_recent(session=session, limit=int(raw))
        return JobList(jobs=[job_out(j) for j in rows]).model_dump(mode="json")


@bp.get("/jobs/<job_id>/images/<int:rank>")
def get_image(job_id: str, rank: int) -> Response:
    svc = services()
    with session_scope(svc.sessions) as session:
        job = jobs.get(session=session, job_id=job_id)
        image = next((i for i in job.images if i.rank == rank), None)
        if image is None:
            raise NotFound(f"job {job_id!r} has no image of rank {rank}", param="rank")
        key, content_type = image.storage_key, image.content_type
    try:
        data = svc.store.get(key)
    except KeyError as e:
        raise NotFound(f"image {rank} of job {job_id!r} is missing from storage") from e
    return Response(
        data,
        content_type=content_type,
        headers={"Cache-Control": "private, max-age=86400, immutable"},
    )
