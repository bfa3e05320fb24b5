"""The jobs table (/admin/jobs, searched and paged by cursor) and a job's page with its actions:
cancel, retry, redeliver a webhook, each through the API's own functions."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Response, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from api import openapi
from api.dashboard.common import PAGE, audit_action, back, bp, date_arg, render
from api.jobs import cancel as cancel_job
from api.serialize import links, outbox
from api.services import services
from api.submission import enqueue
from daikon.contract import JobStatus, decode_cursor, encode_cursor
from daikon.errors import InvalidRequest
from db import dashboard, deliveries, jobs, tenants
from db.models import Job
from db.session import session_scope

TERMINAL = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


def _search() -> dashboard.JobSearch:
    statuses = []
    for raw in request.args.getlist("status"):
        try:
            statuses.append(JobStatus(raw))
        except ValueError:
            raise InvalidRequest(f"status: {raw!r} is not a job status", param="status") from None
    cursor = request.args.get("cursor") or None
    try:
        before = decode_cursor(cursor) if cursor else None
    except ValueError:
        raise InvalidRequest("cursor: not a cursor this page gave", param="cursor") from None
    return dashboard.JobSearch(
        statuses=tuple(statuses),
        tenant_id=request.args.get("tenant") or None,
        model=request.args.get("model") or None,
        created_after=date_arg("from"),
        created_before=date_arg("to"),
        text=request.args.get("q", "").strip() or None,
        before=before,
    )


def _thumb(job: Job) -> str | None:
    if not job.images:
        return None
    return links().image_url(job, job.images[0])


@bp.get("/jobs")
@openapi.hidden
def jobs_page() -> Response:
    svc = services()
    where = _search()
    with session_scope(svc.sessions) as session:
        rows = list(dashboard.search_jobs(session=session, limit=PAGE + 1, where=where))
        page, more = rows[:PAGE], len(rows) > PAGE
        paused = dashboard.paused(session=session)
        names = {t.id: t.name for t in tenants.list_tenants(session=session)}
        progress = svc.live.progress(j.id for j in page if j.status is JobStatus.running)
        items = [
            {
                "job": j,
                "thumb": _thumb(j),
                "progress": progress.get(j.id),
                "paused": j.status is JobStatus.queued and j.model in paused,
            }
            for j in page
        ]
    args = request.args.to_dict(flat=False)
    args.pop("cursor", None)
    args.pop("fragment", None)
    next_url = None
    if more:
        next_url = (
            url_for("dashboard.jobs_page")
            + "?"
            + urlencode(
                {**args, "cursor": encode_cursor(page[-1].created_at, page[-1].id)}, doseq=True
            )
        )
    template = "_jobs_rows.html" if request.args.get("fragment") else "jobs.html"
    return render(
        template,
        items=items,
        next_url=next_url,
        tenants=names,
        statuses=list(JobStatus),
        chosen={s.value for s in where.statuses},
        models=list(svc.settings.model_specs),
        args=request.args,
        first_page=where.before is None,
        refresh=url_for("dashboard.jobs_page")
        + "?"
        + urlencode({**args, "fragment": 1}, doseq=True),
    )


@bp.get("/jobs/<job_id>")
@openapi.hidden
def job_page(job_id: str) -> Response:
    svc = services()
    with session_scope(svc.sessions) as session:
        job = jobs.get(session=session, job_id=job_id)
        where = links(svc)
        images = [(image, where.image_url(job, image)) for image in job.images]
        inputs = [
            (role, record, where.input_url(job, role, record["key"]))
            for role, record in sorted((job.inputs or {}).items())
        ]
        hooks = list(deliveries.list_for_job(session=session, job_id=job_id))
        retries = list(dashboard.retries_of(session=session, job_id=job_id))
        tenant = (
            tenants.get_tenant(session=session, tenant_id=job.tenant_id).name
            if (job.tenant_id)
            else "-"
        )
        is_paused = job.status is JobStatus.queued and jobs.is_paused(
            session=session, model=job.model
        )
        position = (
            jobs.queue_position(session=session, job=job)
            if job.status is JobStatus.queued
            else None
        )
    step = svc.live.progress([job.id]).get(job.id) if job.status is JobStatus.running else None
    template = "_job_live.html" if request.args.get("fragment") else "job.html"
    return render(
        template,
        job=job,
        images=images,
        inputs=inputs,
        hooks=hooks,
        retries=retries,
        tenant=tenant,
        paused=is_paused,
        position=position,
        progress=step,
        terminal=job.status in TERMINAL,
    )


@bp.post("/jobs/<job_id>/cancel")
@openapi.hidden
def cancel(job_id: str) -> BaseResponse:
    svc = services()
    done = cancel_job(svc, job_id)
    with session_scope(svc.sessions) as session:
        audit_action(session, "job.cancel", job_id, changed=done)
    return back(
        "dashboard.job_page", "Canceled." if done else "It was canceled already.", job_id=job_id
    )


@bp.post("/jobs/<job_id>/retry")
@openapi.hidden
def retry(job_id: str) -> BaseResponse:
    svc = services()
    with session_scope(svc.sessions) as session:
        new = jobs.retry(session=session, job_id=job_id)
        new_id, model, priority, cost = new.id, new.model, new.priority, new.cost
        candidates = int(new.params["candidates"])
        audit_action(session, "job.retry", job_id, new_job=new_id)
    enqueue(svc, job_id=new_id, model=model, priority=priority, cost=cost, candidates=candidates)
    return back("dashboard.job_page", f"Retried as job {new_id}.", job_id=new_id)


@bp.post("/webhooks/<delivery_id>/redeliver")
@openapi.hidden
def redeliver(delivery_id: str) -> BaseResponse:
    svc = services()
    with session_scope(svc.sessions) as session:
        delivery = deliveries.redeliver(session=session, delivery_id=delivery_id)
        job_id = delivery.job_id
        audit_action(session, "webhook.redeliver", delivery_id, job=job_id)
    outbox(svc).send([delivery_id])
    return back("dashboard.job_page", "Webhook redelivery scheduled.", job_id=job_id)
