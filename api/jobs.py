"""/v1/jobs: submit, read, list, cancel, and serve the local store's images (signed URLs)."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Blueprint, Response, current_app, request, url_for
from sqlalchemy import Connection

from api import openapi
from api.auth import authenticate, authenticate_in_read, check_key
from api.bodies import header_params, query_params
from api.inputs import FILE_PARTS, REQUEST_PART, job_submission, uploads
from api.serialize import bodies, finished, job_out, links, outbox, polled
from api.services import Services, services
from api.submission import submit
from daikon.contract import (
    ImageQuery,
    JobList,
    JobOut,
    JobRequest,
    JobStatus,
    ListQuery,
    PollHeaders,
    SubmitHeaders,
    WebhookEvent,
    encode_cursor,
)
from daikon.errors import Conflict, NotFound, RequestErrorCode
from db import jobs
from db.session import read_retrying, session_scope
from server import requests
from server.image_urls import SIGNATURE_PARAM, verify
from server.job_view import job_object

log = logging.getLogger("daikon.api")
bp = Blueprint("jobs", __name__, url_prefix="/v1")

# How soon a poller should come back, by status.
RETRY_AFTER = {JobStatus.queued: "2", JobStatus.running: "1"}

# Where a returned job's id leads (OpenAPI links).
JOB_LINKS = {
    name: openapi.Link(endpoint, {"job_id": "$response.body#/id"})
    for name, endpoint in [
        ("get", "jobs.get_job"),
        ("cancel", "jobs.cancel_job"),
        ("events", "events.job_events"),
    ]
}


BINARY = {"type": "string", "format": "binary"}
JOB_FORM = {
    REQUEST_PART: {
        "type": "string",
        "contentMediaType": "application/json",
        "description": "The same JSON object as the application/json body.",
    },
    FILE_PARTS[0]: {
        **BINARY,
        "description": "image and inpaint: the input image (PNG, JPEG "
        "or WebP; its size is the job's).",
    },
    FILE_PARTS[1]: {
        **BINARY,
        "description": "inpaint: the mask, single-channel, the image's "
        "size: white = repaint, black = keep.",
    },
}


@bp.post("/jobs")
@uploads
@openapi.operation(
    "Submit a job",
    tags=["jobs"],
    body=JobRequest,
    headers=SubmitHeaders,
    form=JOB_FORM,
    form_required=[REQUEST_PART],
    responses={
        202: openapi.Reply(
            "Created and queued.", JobOut, headers={"Location": True}, links=JOB_LINKS
        ),
        200: openapi.Reply(
            "A retry with an earlier Idempotency-Key: the job it created.",
            JobOut,
            headers={"Location": True, "Idempotent-Replayed": True},
            links=JOB_LINKS,
        ),
    },
    errors={
        400: "`invalid_json`: the body (or the `request` part) is not a JSON object; "
        "`invalid_image`: an input cannot be decoded.",
        403: "`storage_quota_exceeded`: the tenant stores as many bytes as its storage quota "
        "(DAIKON_TENANT_STORAGE_QUOTA_BYTES or its own), or this edit's inputs would pass "
        "it; nothing was stored (GET /v1/usage shows both figures).",
        404: "`not_found`: `image_id` or `mask_id` names no image of this tenant's.",
        409: "`idempotency_key_reused`: the Idempotency-Key came with a different body.",
        413: "`request_entity_too_large`: the body is larger than DAIKON_MAX_BODY_BYTES, an "
        "input larger than DAIKON_MAX_INPUT_BYTES, or an image has more than "
        "DAIKON_MAX_INPUT_PIXELS pixels.",
        415: "`unsupported_media_type`: neither application/json nor multipart/form-data, or "
        "an input that is not PNG, JPEG or WebP.",
        422: "`invalid_request`: a field is missing, unknown, of the wrong type or out of "
        "bounds (`param` names the first); `unsupported_parameter` or "
        "`unsupported_scheduler`: the model cannot honour a parameter as asked (the "
        "message names it and the model; GET /v1/models shows each model's "
        "capabilities; a `mode` it has no pipeline for is refused so, and a token "
        "model's inpaint mask that is not a black top band of whole token rows over white, "
        "with `param` mask); `invalid_request` "
        "for inputs: a mask of another size than the image or not single-channel, an "
        "input the mode does not take or lacks; `job_too_large`: the job costs more "
        "megapixel-steps than its model allows.",
        429: "`rate_limited` (DAIKON_TENANT_SUBMITS_PER_MINUTE), `too_many_active_jobs` "
        "(DAIKON_TENANT_MAX_ACTIVE_JOBS) or `too_much_queued_work` (the model's "
        "`tenant_queued_cost`); retry after `Retry-After` seconds.",
        503: "`queue_unavailable` (nothing was created; retry) or `database_unavailable`.",
    },
)
def create_job() -> Any:
    principal = authenticate()
    svc = services()
    given = header_params(SubmitHeaders)
    asked, files = job_submission()
    result = submit(svc, principal, asked, files=files, idempotency_key=given.idempotency_key)
    if result.job is not None:  # new, queued: as committed
        body = job_object(result.job, links(svc), queue_position=result.queue_position)
    else:
        with session_scope(svc.sessions) as session:
            body = job_out(session, jobs.get(session=session, job_id=result.job_id))
    headers = {"Location": url_for("jobs.get_job", job_id=result.job_id)}
    if not result.created:
        headers["Idempotent-Replayed"] = "true"
    return body.model_dump(mode="json"), 202 if result.created else 200, headers


@bp.get("/jobs/<job_id>")
@openapi.operation(
    "Get a job",
    tags=["jobs"],
    headers=PollHeaders,
    responses={
        200: openapi.Reply(
            "The job.", JobOut, headers={"ETag": True, "Cache-Control": True, "Retry-After": False}
        ),
        304: openapi.Reply(
            "Unchanged since the ETag sent.",
            media_type=None,
            headers={"ETag": True, "Retry-After": False},
        ),
    },
)
def get_job(job_id: str) -> Any:
    # The most frequent request Daikon answers: one indexed read decides the ETag (a 304
    # builds nothing) and whether the body built for the row as it stands is at hand.
    principal, key_to_check = authenticate_in_read()
    svc = services()
    not_modified = request.if_none_match
    done = finished(svc, job_id, principal.tenant_id)
    if done is not None:
        authenticate()  # nothing else to read: the key is checked the ordinary way
        if not_modified.contains(done.etag):
            # Terminal: no Retry-After, whichever terminal status it is.
            return Response(status=304, headers=_poll_headers(done.etag, JobStatus.succeeded))
        return Response(
            done.body + b"\n",
            mimetype="application/json",
            headers=_poll_headers(done.etag, JobStatus.succeeded),
        )

    def read(conn: Connection) -> tuple[bytes | None, str, JobStatus]:
        count = svc.places.counts(job_id)
        state, key_active = jobs.poll_state(
            session=conn,
            job_id=job_id,
            tenant_id=principal.tenant_id,
            key_id=key_to_check,
            place=count,
        )
        if state is None:
            if key_to_check is not None and not key_active:
                authenticate()  # the key, checked the ordinary way before any 404
            raise NotFound(f"job {job_id!r} not found", param="id")
        check_key(key_to_check, key_active)
        state = svc.places.placed(conn, state, counted=count)
        poll = polled(svc, [state])[0]
        if not_modified.contains(poll.etag):
            return None, poll.etag, state.status
        body, tag = bodies(conn, svc, [poll])[0]
        return body, tag, state.status

    body, tag, status = read_retrying(svc.reads, read)
    if body is None:
        return Response(status=304, headers=_poll_headers(tag, status))
    return Response(body + b"\n", mimetype="application/json", headers=_poll_headers(tag, status))


def _poll_headers(tag: str, status: JobStatus) -> dict[str, str]:
    headers = {"ETag": f'"{tag}"', "Cache-Control": "no-cache"}
    if status in RETRY_AFTER:
        headers["Retry-After"] = RETRY_AFTER[status]
    return headers


@bp.get("/jobs")
@openapi.operation(
    "List jobs, newest first",
    tags=["jobs"],
    query=ListQuery,
    responses={200: JobList},
    errors=[422],
)
def list_jobs() -> Any:
    # One query for the page's states, one for the rows whose body is not at hand.
    principal = authenticate()
    svc = services()
    q = query_params(requests.list_query(svc.settings))
    limit = q.limit
    where = jobs.ListFilter(
        tenant_id=principal.tenant_id,
        status=q.status,
        model=q.model,
        created_after=q.created_after,
        before=q.cursor,
    )

    def read(conn: Connection) -> tuple[list[jobs.PollState], list[tuple[bytes, str]]]:
        # Deep queues are placed from the polls' shared ranking (QueuePlaces), not ranked anew.
        deep = svc.places.deep_models()
        states = jobs.list_states(session=conn, limit=limit + 1, where=where, unranked=deep)
        placed = [
            svc.places.placed(conn, state, counted=state.model not in deep)
            for state in states[:limit]
        ]
        return states, bodies(conn, svc, polled(svc, placed))

    states, built = read_retrying(svc.reads, read)
    page, more = states[:limit], len(states) > limit
    cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
    # JobList's fields in order, around the jobs' own bytes (as Flask's JSON would write it).
    tail = current_app.json.dumps({"next_cursor": cursor, "has_more": more}, separators=(",", ":"))[
        1:
    ]
    body = b'{"jobs":[' + b",".join(b for b, _ in built) + b"]," + tail.encode() + b"\n"
    return Response(body, mimetype="application/json")


@bp.post("/jobs/<job_id>/cancel")
@openapi.operation(
    "Cancel a job",
    tags=["jobs"],
    responses={200: JobOut},
    errors={409: "`job_finished`: the job already succeeded or failed."},
)
def cancel_job(job_id: str) -> Any:
    """queued or running -> canceled, at once and exactly once; the worker stops at its next
    denoising step. Canceling a canceled job is a no-op; a finished one is a conflict."""
    principal = authenticate()
    svc = services()
    cancel(svc, job_id, tenant_id=principal.tenant_id)
    with session_scope(svc.sessions) as session:
        return job_out(session, jobs.get(session=session, job_id=job_id)).model_dump(mode="json")


def cancel(svc: Services, job_id: str, *, tenant_id: str | None = None) -> bool:
    """Cancel one job (of `tenant_id`, if given): True if this call canceled it, False if it
    was canceled already; Conflict if it finished. Shared with the dashboard."""
    with session_scope(svc.sessions) as session:
        job = jobs.get(session=session, job_id=job_id, tenant_id=tenant_id)
        events = outbox(svc)
        sent: list[str] = []
        canceled = None
        if job.status is not JobStatus.canceled:
            canceled = jobs.cancel(session=session, job_id=job_id)
            session.refresh(job)
            if canceled is not None:  # this request canceled it: one job.canceled, committed
                sent = events.record(session, job, WebhookEvent.canceled)  # with the change
            elif job.status is not JobStatus.canceled:
                raise Conflict(
                    f"job {job_id!r} already {job.status.value}; it cannot be canceled",
                    param="id",
                    code=RequestErrorCode.job_finished,
                )
    # After the commit: the worker may look at any moment and must find the row canceled.
    try:
        svc.live.request_cancel(job_id)
        svc.live.announce(job_id)
    except redis.RedisError as e:
        # Still canceled, exactly once: a worker that misses the flag finishes its run, finds
        # the job no longer running and discards its images.
        log.warning("cancel flag for job %s not set: %s", job_id, e)
    events.send(sent)
    return canceled is not None


@bp.get("/jobs/<job_id>/images/<int:rank>")
@openapi.operation(
    "Get an image (signed URL)",
    tags=["jobs"],
    auth=None,
    query=ImageQuery,
    responses={
        200: openapi.Reply(
            "The image.",
            media_type="image/png",
            schema={"type": "string", "format": "binary"},
            headers={"Cache-Control": True},
        )
    },
    errors={404: "`not_found`: no such image, or the signature is wrong or expired.", 503: ""},
)
def get_image(job_id: str, rank: int) -> Response:
    """Open to whoever holds the signed URL (as with S3 presigned URLs), no API key needed."""
    svc = services()
    if not _signed(svc, job_id, rank):
        # Same answer as for a missing image: a job id alone reveals nothing.
        raise NotFound(f"image {rank} of job {job_id!r} not found (or the URL expired)")
    with session_scope(svc.sessions) as session:
        job = jobs.get(session=session, job_id=job_id)
        image = next((i for i in job.images if i.rank == rank), None)
        if image is None:
            raise NotFound(f"job {job_id!r} has no image of rank {rank}", param="rank")
        key, content_type = image.storage_key, image.content_type
    return _stored(svc, key, content_type, f"image {rank} of job {job_id!r}")


def _signed(svc: Services, job_id: str, what: int | str) -> bool:
    """The request's `expires` and `sig` sign `what` of the job; anything odd is False (a
    404, as a wrong signature)."""
    expires = request.args.get("expires", "")
    signature = request.args.get(SIGNATURE_PARAM, "")
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    # At most 12 digits (year 33658): int() refuses thousands of digits with a ValueError.
    number = expires.isascii() and expires.isdigit() and len(expires) <= 12
    return number and verify(svc.signing_key, job_id, what, int(expires), signature)


def _stored(svc: Services, key: str, content_type: str, what: str) -> Response:
    """A stored object, cacheable by the holder of its signed URL (it never changes)."""
    try:
        data = svc.store.get(key)
    except KeyError as e:
        raise NotFound(f"{what} is missing from storage") from e
    return Response(
        data,
        content_type=content_type,
        headers={"Cache-Control": "private, max-age=3600, immutable"},
    )


@bp.get("/jobs/<job_id>/inputs/<role>")
@openapi.operation(
    "Get an edit job's input (signed URL)",
    tags=["jobs"],
    auth=None,
    query=ImageQuery,
    responses={
        200: openapi.Reply(
            "The input image or mask.",
            media_type="image/png",
            schema={"type": "string", "format": "binary"},
            headers={"Cache-Control": True},
        )
    },
    errors={404: "`not_found`: no such input, or the signature is wrong or expired.", 503: ""},
)
def get_input(job_id: str, role: str) -> Response:
    """An image or inpaint job's input, as stored (PNG); signed like the output images."""
    svc = services()
    if not _signed(svc, job_id, f"input-{role}"):
        raise NotFound(f"input {role!r} of job {job_id!r} not found (or the URL expired)")
    with session_scope(svc.sessions) as session:
        record = (jobs.get(session=session, job_id=job_id).inputs or {}).get(role)
    if record is None:
        raise NotFound(f"job {job_id!r} has no input {role!r}", param="role")
    return _stored(svc, record["key"], record["content_type"], f"input {role!r} of job {job_id!r}")
