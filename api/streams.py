"""Server-Sent Events for one job: `status`, `progress`, and a final `done` event carrying the
finished job, then the stream closes.

Event ids only grow, so `Last-Event-ID` resumes a dropped stream: anything at or before that
id is not sent again, and the terminal event (the largest id) is never lost. Changes are pushed
by Redis pub/sub; the database is re-read on each change and at least every few seconds, so a
missed notification delays an event but never loses it. Streams per process are capped below
the server's threads, so streams can never starve ordinary requests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request, stream_with_context

from api import openapi
from api.auth import authenticate
from api.bodies import header_params
from api.serialize import job_out
from api.services import Services, services
from daikon.contract import JobOut, JobStatus, StreamHeaders
from daikon.errors import RequestErrorCode
from daikon.resources import StreamStatus
from db import jobs
from db.session import session_scope

bp = Blueprint("events", __name__, url_prefix="/v1")

RECHECK_SECONDS = 5.0
MIN_READ_INTERVAL = 0.25
# A comment line every few quiet seconds: proxies keep the stream open, and a client that
# went away is noticed (on the failed write) so its thread is freed within that time.
KEEPALIVE_SECONDS = 5.0
TERMINAL_ID = 10**9


def status_event_id(status: JobStatus) -> int:
    """queued 1, running 2, terminal 10**9; progress after step k is k + 2 (k >= 1)."""
    if status.terminal:
        return TERMINAL_ID
    return 1 if status is JobStatus.queued else 2


def _sse(kind: str, ident: int, data: Any) -> str:
    return f"id: {ident}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _snapshot(svc: Services, job_id: str, tenant_id: str) -> JobOut:
    with session_scope(svc.sessions) as session:
        return job_out(session, jobs.get(session=session, job_id=job_id, tenant_id=tenant_id))


def _stream(svc: Services, job_id: str, tenant_id: str, last_id: int) -> Iterator[str]:
    with svc.live.watch(job_id) as watch:  # before the first read: no change slips by
        last_sent = time.monotonic()
        # A stream ends after a while even if the job does not; the client reconnects with
        # Last-Event-ID and loses nothing.
        closes_at = time.monotonic() + svc.settings.api.event_stream_max_seconds
        while time.monotonic() < closes_at:
            last_read = time.monotonic()
            out = _snapshot(svc, job_id, tenant_id)
            status_id = status_event_id(out.status)
            if out.status.terminal:
                if status_id > last_id:
                    yield _sse("done", status_id, out.model_dump(mode="json"))
                return  # nothing can follow the final event
            if status_id > last_id:
                status = StreamStatus(
                    id=out.id, status=out.status, queue_position=out.queue_position
                )
                yield _sse("status", status_id, status.model_dump(mode="json"))
                last_id, last_sent = status_id, time.monotonic()
            if out.progress is not None and out.progress.step >= 1:
                progress_id = out.progress.step + 2
                if progress_id > last_id:
                    yield _sse("progress", progress_id, out.progress.model_dump())
                    last_id, last_sent = progress_id, time.monotonic()
            if watch.wait(RECHECK_SECONDS) and not watch.status_changed:
                # A step: at most a few reads a second per stream, however fast the steps are
                # announced; a change of status (started, finished) is still read at once.
                pause = last_read + MIN_READ_INTERVAL - time.monotonic()
                watch.wait(max(0.0, pause), status_only=True)
            if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()


@bp.get("/jobs/<job_id>/events")
@openapi.operation(
    "Stream a job's events (SSE)",
    tags=["jobs"],
    headers=StreamHeaders,
    responses={
        200: openapi.Reply(
            "Server-Sent Events: `status` {id, status, queue_position}, `progress` {step, total, "
            "fraction}, and a final `done` carrying the job object; then the stream closes.",
            media_type="text/event-stream",
            schema={"type": "string"},
            headers={"Cache-Control": True},
        )
    },
    errors={503: "`too_many_streams` (poll GET /v1/jobs/{id} instead) or `database_unavailable`."},
)
def job_events(job_id: str) -> Response:
    principal = authenticate()
    svc = services()
    _snapshot(svc, job_id, principal.tenant_id)  # 404 for unknown or foreign jobs, before 200
    last_id = header_params(StreamHeaders).resume_after()
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":  # the headers a GET would get; no stream, so no slot
        return Response(mimetype="text/event-stream", headers=headers)
    slot = svc.long_requests.acquire(
        principal.tenant_id,
        code=RequestErrorCode.too_many_streams,
        what="open event streams",
        instead="poll GET /v1/jobs/{id} instead",
    )
    try:
        response = Response(
            stream_with_context(_stream(svc, job_id, principal.tenant_id, last_id)),
            mimetype="text/event-stream",
            headers=headers,
        )
    except BaseException:
        slot.release()
        raise
    # The server closes every response it was handed, whether its body was sent, cut short
    # by a client that went away, or never iterated: the slot comes back on each path.
    response.call_on_close(slot.release)
    return response
