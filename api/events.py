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
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request, stream_with_context

from api import openapi
from api.auth import authenticate
from api.serialize import job_out
from api.services import Services, services
from daikon import live
from daikon.contract import JobOut, JobStatus
from daikon.errors import ServiceUnavailable
from db import jobs
from db.session import session_scope

bp = Blueprint("events", __name__, url_prefix="/v1")

RECHECK_SECONDS = 5.0
KEEPALIVE_SECONDS = 15.0
TERMINAL_ID = 10**9
_open = 0
_open_lock = threading.Lock()


def event_id(out: JobOut) -> int:
    """queued 1, running 2, running after step k: k + 2, terminal 10**9."""
    if out.status.terminal:
        return TERMINAL_ID
    if out.status is JobStatus.queued:
        return 1
    return (out.progress.step if out.progress else 0) + 2


def _sse(kind: str, ident: int, data: Any) -> str:
    return f"id: {ident}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _snapshot(svc: Services, job_id: str, tenant_id: str) -> JobOut:
    with session_scope(svc.sessions) as session:
        return job_out(session, jobs.get(session=session, job_id=job_id, tenant_id=tenant_id))


def _stream(svc: Services, job_id: str, tenant_id: str, last_id: int) -> Iterator[str]:
    global _open
    pubsub = svc.live.redis.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(live.channel(job_id))  # before the first read: no change slips by
        sent_status: str | None = None
        last_sent = time.monotonic()
        # A stream ends after a while even if the job does not; the client reconnects with
        # Last-Event-ID and loses nothing.
        closes_at = time.monotonic() + svc.settings.event_stream_max_seconds
        while time.monotonic() < closes_at:
            out = _snapshot(svc, job_id, tenant_id)
            ident = event_id(out)
            if ident > last_id:
                if out.status.terminal:
                    yield _sse("done", ident, out.model_dump(mode="json"))
                    return
                if out.status.value != sent_status:
                    yield _sse("status", ident, {"id": out.id, "status": out.status.value,
                                                 "queue_position": out.queue_position})  # fmt: skip
                    sent_status = out.status.value
                if out.progress is not None:
                    yield _sse("progress", ident, out.progress.model_dump())
                last_id, last_sent = ident, time.monotonic()
            deadline = time.monotonic() + RECHECK_SECONDS
            while time.monotonic() < deadline:
                if pubsub.get_message(timeout=min(1.0, deadline - time.monotonic())):
                    break
            if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
    finally:
        pubsub.close()
        with _open_lock:
            _open -= 1


@bp.get("/jobs/<job_id>/events")
@openapi.operation(
    "Stream a job's events (SSE)", tags=["jobs"],
    params=[openapi.header("Last-Event-ID", {"type": "string", "pattern": "^[0-9]+$"},
                           "Resume a dropped stream: events up to this id are not sent again.")],
    responses={200: openapi.Reply(
        "Server-Sent Events: `status` {id, status, queue_position}, `progress` {step, total, "
        "fraction}, and a final `done` carrying the job object; then the stream closes.",
        media_type="text/event-stream", schema={"type": "string"},
        headers={"Cache-Control": True})},
    errors={503: "`too_many_streams` (poll GET /v1/jobs/{id} instead) or "
                 "`database_unavailable`."},
)  # fmt: skip
def job_events(job_id: str) -> Response:
    global _open
    principal = authenticate()
    svc = services()
    _snapshot(svc, job_id, principal.tenant_id)  # 404 for unknown or foreign jobs, before 200
    raw = request.headers.get("Last-Event-ID", "0")
    last_id = int(raw) if raw.isascii() and raw.isdigit() else 0
    with _open_lock:
        if _open >= svc.settings.max_event_streams:
            raise ServiceUnavailable(
                "too many open event streams on this server; poll GET /v1/jobs/{id} instead",
                code="too_many_streams",
            )
        _open += 1
    return Response(
        stream_with_context(_stream(svc, job_id, principal.tenant_id, last_id)),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
