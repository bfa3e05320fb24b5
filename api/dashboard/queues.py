"""The queues page: depth per model and tenant, and the actions that stop or empty a queue
(pause, resume, cancel every queued job of a model or tenant after a confirmation page)."""

from __future__ import annotations

from flask import Response, request
from werkzeug.wrappers import Response as BaseResponse

from api import openapi
from api.dashboard.common import audit_action, back, bp, current_viewer, render
from api.jobs import cancel as cancel_job
from api.services import services
from daikon.contract import JobStatus
from daikon.errors import DaikonError, InvalidRequest, NotFound
from db import dashboard, jobs, tenants
from db.session import session_scope


@bp.get("/queues")
@openapi.hidden
def queues_page() -> Response:
    svc = services()
    with session_scope(svc.sessions) as session:
        paused = dashboard.paused(session=session)
        # A paused model is listed even without jobs or configuration: it can be resumed.
        rows = dashboard.queues(session=session, models=[*svc.settings.model_specs, *paused])
        names = tenants.list_tenants(session=session)
        tenant_rows = [
            (t, len(dashboard.queued_ids(session=session, tenant_id=t.id))) for t in names
        ]
    return render("queues.html", queues=rows, paused=paused, tenants=tenant_rows)


@bp.post("/queues/<model>/pause")
@openapi.hidden
def pause(model: str) -> BaseResponse:
    """Only a model the queues page lists: configured, or with queued or running jobs."""
    svc = services()
    with session_scope(svc.sessions) as session:
        if model not in svc.settings.model_specs and not dashboard.has_work(
            session=session, model=model
        ):
            raise NotFound(
                f"model {model!r} is not configured and has no queued or running "
                "jobs: there is no queue to pause",
                param="model",
            )
        changed = dashboard.pause(session=session, model=model, by=current_viewer().actor)
        audit_action(session, "queue.pause", model, changed=changed)
    return back("dashboard.queues_page", f"Queue {model} paused: workers start none of its jobs.")


@bp.post("/queues/<model>/resume")
@openapi.hidden
def resume(model: str) -> BaseResponse:
    with session_scope(services().sessions) as session:
        changed = dashboard.resume(session=session, model=model)
        audit_action(session, "queue.resume", model, changed=changed)
    return back("dashboard.queues_page", f"Queue {model} resumed.")


def _cancel_scope() -> tuple[str | None, str | None, str]:
    model = request.values.get("model") or None
    tenant_id = request.values.get("tenant") or None
    if model is None and tenant_id is None:
        raise InvalidRequest("name a model or a tenant whose queued jobs to cancel", param="model")
    what = " and ".join(
        x
        for x in (f"model {model}" if model else "", f"tenant {tenant_id}" if tenant_id else "")
        if x
    )
    return model, tenant_id, what


@bp.get("/queues/cancel")
@openapi.hidden
def confirm_cancel() -> Response:
    model, tenant_id, what = _cancel_scope()
    with session_scope(services().sessions) as session:
        if tenant_id is not None:
            tenants.get_tenant(session=session, tenant_id=tenant_id)
        count = len(dashboard.queued_ids(session=session, model=model, tenant_id=tenant_id))
    return render("confirm_cancel.html", model=model, tenant=tenant_id, what=what, count=count)


@bp.post("/queues/cancel")
@openapi.hidden
def cancel_queued() -> BaseResponse:
    """Cancel the queued jobs of a model or tenant, each as POST /v1/jobs/{id}/cancel does
    (one job.canceled event, the cancel flag); a job that started meanwhile is left alone."""
    model, tenant_id, what = _cancel_scope()
    svc = services()
    with session_scope(svc.sessions) as session:
        ids = dashboard.queued_ids(session=session, model=model, tenant_id=tenant_id)
    canceled = 0
    for job_id in ids:
        try:
            with session_scope(svc.sessions) as session:
                if jobs.get(session=session, job_id=job_id).status is not JobStatus.queued:
                    continue
            canceled += cancel_job(svc, job_id)
        except DaikonError:  # finished or deleted meanwhile
            continue
    with session_scope(svc.sessions) as session:
        audit_action(
            session,
            "queue.cancel_all",
            what,
            canceled=canceled,
            confirmed=request.form.get("count"),
        )
    return back("dashboard.queues_page", f"Canceled {canceled} queued jobs of {what}.")
