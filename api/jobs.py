"""/v1/jobs: submit, read, list, cancel, and serve the local store's images (signed URLs)."""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Blueprint, Response, request, url_for

from api import openapi
from api.auth import authenticate
from api.bodies import json_body
from api.serialize import etag, job_out, job_outs, outbox
from api.services import services
from api.submission import submit
from daikon.contract import JobList, JobOut, JobRequest, JobStatus, WebhookEvent
from daikon.errors import Conflict, InvalidRequest, NotFound
from daikon.image_urls import verify
from db import jobs
from db.session import session_scope

log = logging.getLogger("daikon.api")
bp = Blueprint("jobs", __name__, url_prefix="/v1")

# How soon a poller should come back, by status.
RETRY_AFTER = {JobStatus.queued: "2", JobStatus.running: "1"}

# Where a returned job's id leads (OpenAPI links).
JOB_LINKS = {
    name: openapi.Link(endpoint, {"job_id": "$response.body#/id"})
    for name, endpoint in [("get", "jobs.get_job"), ("cancel", "jobs.cancel_job"),
                           ("events", "events.job_events")]
}  # fmt: skip


@bp.post("/jobs")
@openapi.operation(
    "Submit a job", tags=["jobs"], body=JobRequest,
    params=[openapi.header("Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": 255},
                           "Retrying with the same key and body answers the same job again.")],
    responses={
        202: openapi.Reply("Created and queued.", JobOut, headers={"Location": True},
                           links=JOB_LINKS),
        200: openapi.Reply("A retry with an earlier Idempotency-Key: the job it created.", JobOut,
                           headers={"Location": True, "Idempotent-Replayed": True},
                           links=JOB_LINKS),
    },
    errors={
        409: "`idempotency_key_reused`: the Idempotency-Key came with a different body.",
        429: "`rate_limited` (DAIKON_TENANT_SUBMITS_PER_MINUTE) or `too_many_active_jobs` "
             "(DAIKON_TENANT_MAX_ACTIVE_JOBS); retry after `Retry-After` seconds.",
        503: "`queue_unavailable` (nothing was created; retry) or `database_unavailable`.",
    },
)  # fmt: skip
def create_job() -> Any:
    principal = authenticate()
    svc = services()
    result = submit(
        svc, principal, json_body(), idempotency_key=request.headers.get("Idempotency-Key")
    )
    with session_scope(svc.sessions) as session:
        body = job_out(session, jobs.get(session=session, job_id=result.job_id))
    headers = {"Location": url_for("jobs.get_job", job_id=result.job_id)}
    if not result.created:
        headers["Idempotent-Replayed"] = "true"
    return body.model_dump(mode="json"), 202 if result.created else 200, headers


@bp.get("/jobs/<job_id>")
@openapi.operation(
    "Get a job", tags=["jobs"],
    params=[openapi.header("If-None-Match", {"type": "string"},
                           "An ETag from an earlier answer: 304 while the job is unchanged.")],
    responses={
        200: openapi.Reply("The job.", JobOut, headers={"ETag": True, "Cache-Control": True,
                                                        "Retry-After": False}),
        304: openapi.Reply("Unchanged since the ETag sent.", media_type=None,
                           headers={"ETag": True, "Retry-After": False}),
    },
)  # fmt: skip
def get_job(job_id: str) -> Any:
    principal = authenticate()
    svc = services()
    with session_scope(svc.sessions) as session:
        out = job_out(session, jobs.get(session=session, job_id=job_id,
                                        tenant_id=principal.tenant_id))  # fmt: skip
    tag = etag(out)
    headers = {"ETag": f'"{tag}"', "Cache-Control": "no-cache"}
    if out.status in RETRY_AFTER:
        headers["Retry-After"] = RETRY_AFTER[out.status]
    if request.if_none_match.contains(tag):
        return Response(status=304, headers=headers)
    return out.model_dump(mode="json"), 200, headers


def _cursor_decode(raw: str) -> tuple[datetime, str]:
    try:
        at, job_id = json.loads(base64.urlsafe_b64decode(raw.encode() + b"=="))
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("no time zone")
        return when.astimezone(UTC), str(job_id)  # OverflowError near year 1 or 9999
    except Exception as e:
        raise InvalidRequest("cursor is not one this API returned", param="cursor") from e


def _cursor_encode(at: datetime, job_id: str) -> str:
    raw = json.dumps([at.isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _list_filter(tenant_id: str) -> jobs.ListFilter:
    args = request.args
    unknown = set(args) - {"status", "model", "created_after", "limit", "cursor"}
    if unknown:
        raise InvalidRequest(f"unknown query parameter {sorted(unknown)[0]!r}",
                             param=sorted(unknown)[0])  # fmt: skip
    status = args.get("status")
    if status is not None and status not in JobStatus.__members__:
        raise InvalidRequest(
            f"status must be one of {', '.join(JobStatus.__members__)}", param="status"
        )
    created_after = None
    if "created_after" in args:
        try:
            created_after = datetime.fromisoformat(args["created_after"].replace("Z", "+00:00"))
        except ValueError as e:
            raise InvalidRequest("created_after must be an ISO 8601 time",
                                 param="created_after") from e  # fmt: skip
        if created_after.tzinfo is None:
            raise InvalidRequest("created_after needs a time zone (e.g. Z)", param="created_after")
        try:
            created_after = created_after.astimezone(UTC)
        except OverflowError as e:  # 0001-01-01T00:00+01:00 is before the year 1 in UTC
            raise InvalidRequest("created_after is out of range", param="created_after") from e
    cursor = args.get("cursor")
    return jobs.ListFilter(
        tenant_id=tenant_id,
        status=JobStatus(status) if status else None,
        model=args.get("model"),
        created_after=created_after,
        before=_cursor_decode(cursor) if cursor else None,
    )


@bp.get("/jobs")
@openapi.operation(
    "List jobs, newest first", tags=["jobs"],
    params=[
        openapi.query("status", {"type": "string", "enum": [s.value for s in JobStatus]}),
        openapi.query("model", {"type": "string"}, "Only jobs of this model."),
        openapi.query("created_after", {"type": "string", "format": "date-time"},
                      "Only jobs created after this time (with a time zone)."),
        openapi.query("limit", lambda s: {"type": "integer", "minimum": 1,
                                          "maximum": s.list_limit_max, "default": 20}),
        openapi.query("cursor", {"type": "string"}, "`next_cursor` of the previous page."),
    ],
    responses={200: JobList}, errors=[422],
)  # fmt: skip
def list_jobs() -> Any:
    principal = authenticate()
    svc = services()
    raw = request.args.get("limit", "20")
    limit_max = svc.settings.list_limit_max
    if not (raw.isascii() and raw.isdigit()) or not (1 <= int(raw) <= limit_max):
        raise InvalidRequest(f"limit must be an integer between 1 and {limit_max}", param="limit")
    limit = int(raw)
    where = _list_filter(principal.tenant_id)
    with session_scope(svc.sessions) as session:
        rows = list(jobs.list_recent(session=session, limit=limit + 1, where=where))
        page, more = rows[:limit], len(rows) > limit
        out = JobList(
            jobs=job_outs(session, page),
            has_more=more,
            next_cursor=_cursor_encode(page[-1].created_at, page[-1].id) if more else None,
        )
    return out.model_dump(mode="json")


@bp.post("/jobs/<job_id>/cancel")
@openapi.operation(
    "Cancel a job", tags=["jobs"], responses={200: JobOut},
    errors={409: "`job_finished`: the job already succeeded or failed."},
)  # fmt: skip
def cancel_job(job_id: str) -> Any:
    """queued or running -> canceled, at once and exactly once; the worker stops at its next
    denoising step. Canceling a canceled job is a no-op; a finished one is a conflict."""
    principal = authenticate()
    svc = services()
    with session_scope(svc.sessions) as session:
        job = jobs.get(session=session, job_id=job_id, tenant_id=principal.tenant_id)
        events = outbox(svc)
        sent: list[str] = []
        if job.status is not JobStatus.canceled:
            canceled = jobs.cancel(session=session, job_id=job_id)
            session.refresh(job)
            if canceled is not None:  # this request canceled it: one job.canceled, committed
                sent = events.record(session, job, WebhookEvent.canceled)  # with the change
            elif job.status is not JobStatus.canceled:
                raise Conflict(
                    f"job {job_id!r} already {job.status.value}; it cannot be canceled",
                    param="id", code="job_finished",
                )  # fmt: skip
    # After the commit: the worker may look at any moment and must find the row canceled.
    try:
        svc.live.request_cancel(job_id)
        svc.live.announce(job_id)
    except redis.RedisError as e:
        # Still canceled, exactly once: a worker that misses the flag finishes its run, finds
        # the job no longer running and discards its images.
        log.warning("cancel flag for job %s not set: %s", job_id, e)
    events.send(sent)
    with session_scope(svc.sessions) as session:
        return job_out(session, jobs.get(session=session, job_id=job_id)).model_dump(mode="json")


@bp.get("/jobs/<job_id>/images/<int:rank>")
@openapi.operation(
    "Get an image (signed URL)", tags=["jobs"], auth=None,
    params=[openapi.query("expires", {"type": "integer"}, "From the signed URL.", required=True),
            openapi.query("sig", {"type": "string"}, "From the signed URL.", required=True)],
    responses={200: openapi.Reply("The image.", media_type="image/png",
                                  schema={"type": "string", "format": "binary"},
                                  headers={"Cache-Control": True})},
    errors={404: "`not_found`: no such image, or the signature is wrong or expired.",
            503: ""},
)  # fmt: skip
def get_image(job_id: str, rank: int) -> Response:
    """Open to whoever holds the signed URL (as with S3 presigned URLs), no API key needed."""
    svc = services()
    expires = request.args.get("expires", "")
    signature = request.args.get("sig", "")
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    number = expires.isascii() and expires.isdigit()
    if not (number and verify(svc.signing_key, job_id, rank, int(expires), signature)):
        # Same answer as for a missing image: a job id alone reveals nothing.
        raise NotFound(f"image {rank} of job {job_id!r} not found (or the URL expired)")
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
        headers={"Cache-Control": "private, max-age=3600, immutable"},
    )
