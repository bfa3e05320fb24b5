"""/admin: the operators' dashboard, server-rendered (Jinja templates in api/templates/admin,
one small script in api/static/dashboard). Pages read through db/ service functions; every
action goes through the same functions as the API (cancel, publish, redeliver, rotate) and is
written to the audit log in the transaction that makes it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, g, make_response, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from api import openapi
from api.auth import ADMIN_TENANT, identify, keys_changed
from api.dashboard import access
from api.dashboard.charts import line_chart
from api.jobs import cancel as cancel_job
from api.serialize import links, outbox
from api.services import services
from api.submission import enqueue
from daikon import heartbeats
from daikon.contract import (
    DEFAULT_PRIORITY,
    PRIORITY_MAX,
    JobStatus,
    decode_cursor,
    encode_cursor,
)
from daikon.errors import BadRequest, DaikonError, InvalidRequest, NotFound
from db import dashboard, deliveries, jobs, retention, tenants
from db.models import Job, KeyScope
from db.session import session_scope

bp = Blueprint("dashboard", __name__, url_prefix="/admin")
PAGE = 50
TERMINAL = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)
STAGES = ("queue", "inference", "ranking", "upload")
PUBLIC = {"dashboard.login", "dashboard.login_form"}
# The dates a search or usage period may name: far enough from year 1 and 9999 that no
# arithmetic on them (a zone's offset, a day before) leaves the calendar.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
NEXT_LIMIT = 2048  # characters of a `next=` address kept through the sign-in


def now() -> datetime:
    return datetime.now(UTC)


# --- access ---------------------------------------------------------------------------------


@bp.before_request
def _signed_in() -> BaseResponse | None:
    if request.endpoint in PUBLIC:
        return None
    viewer = access.current()
    if viewer is None:
        if request.method == "GET" and not request.args.get("fragment"):
            back = request.full_path if _safe_next(request.full_path) else None
            return redirect(url_for("dashboard.login_form", next=back))
        return _page("message.html", 401, title="Signed out", message="Sign in again.")
    if request.method == "POST":
        access.check_csrf(viewer.csrf)
        if request.endpoint != "dashboard.logout":
            access.require_admin(viewer)
    return None


@bp.after_request
def _headers(resp: Response) -> Response:
    shown = g.pop("shown_notice", None)
    if shown is not None:
        with session_scope(services().sessions) as session:
            dashboard.take_notice(session=session, token=_viewer().token, notice=shown)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    # No inline script or style; images may come from the object store's presigned URLs.
    resp.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: http: "
        "https:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return resp


@bp.errorhandler(DaikonError)
def _refused(e: DaikonError) -> Any:
    resp = _page("message.html", e.status, title=f"{e.status}: {e.code}", message=e.message)
    retry_after = getattr(e, "retry_after", None)
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


def _page(template: str, status: int = 200, **context: Any) -> Response:
    viewer = access.current() if request.endpoint not in PUBLIC else None
    notice = None
    # A whole page shows the session's pending notice, once (a fragment's refresh leaves it);
    # it is cleared after the response is made (_headers), outside the view's transaction.
    if viewer is not None and viewer.notice and not template.startswith("_"):
        notice = g.shown_notice = viewer.notice
    body = render_template(f"admin/{template}", viewer=viewer, notice=notice, **context)
    return make_response(body, status)


def _viewer() -> access.Viewer:
    viewer = access.current()
    assert viewer is not None  # _signed_in ran
    return viewer


def _back(endpoint: str, notice: str, **values: Any) -> BaseResponse:
    """After an action: back to a page that says what happened. The notice is kept in the
    session (shown once), never put in the URL, so no link can make a page say anything."""
    with session_scope(services().sessions) as session:
        dashboard.set_notice(session=session, token=_viewer().token, notice=notice)
    return redirect(url_for(endpoint, **values), code=303)


def _safe_next(target: str) -> bool:
    """Whether a sign-in may send the browser on to `target`: a dashboard address on this
    site, in printable ASCII (no CR/LF or other control characters that would break the
    Location header, no backslash a browser reads as a slash), no dot segments."""
    path = target.partition("?")[0]
    return (
        0 < len(target) <= NEXT_LIMIT
        and (path == "/admin" or path.startswith("/admin/"))
        and all("\x21" <= c <= "\x7e" for c in target)
        and "\\" not in target
        and not {".", ".."} & set(path.split("/"))
    )


def _audit(session: Any, action: str, target: str = "", **detail: Any) -> None:
    viewer = _viewer()
    dashboard.audit(session=session, actor=viewer.actor, key_id=viewer.key_id, action=action,
                    target=target, detail=detail)  # fmt: skip


@bp.get("/login")
@openapi.hidden
def login_form() -> Response:
    token = access.new_login_token()
    target = request.args.get("next", "")
    resp = _page("login.html", login_token=token, next=target if _safe_next(target) else "")
    resp.set_cookie(access.LOGIN_COOKIE, token, httponly=True, samesite="Strict",
                    secure=access.cookie_secure(), max_age=600, path="/admin")  # fmt: skip
    return resp


@bp.post("/login")
@openapi.hidden
def login() -> BaseResponse:
    access.count_login_attempt()
    expected = request.cookies.get(access.LOGIN_COOKIE, "")
    if not expected:
        raise access.CsrfRefused("the sign-in form expired: reload it and retry")
    access.check_csrf(expected)
    # Before the key is looked at: a refused address leaves no session behind.
    target = request.form.get("next", "") or url_for("dashboard.overview")
    if not _safe_next(target):
        raise BadRequest("next: not an address of this dashboard (a path under /admin, in "
                         "printable ASCII)", param="next")  # fmt: skip
    key = request.form.get("key", "").strip()
    svc = services()
    with session_scope(svc.sessions) as session:
        holder = identify(session, key) if key else None
        if holder is None or holder.scope is KeyScope.tenant:
            return _page(
                "login.html",
                401,
                login_token=expected,
                next="",
                error="That is not an admin or operator key (or it was revoked).",
            )
        dashboard.purge_sessions(session=session)
        token = dashboard.create_session(
            session=session, key_id=holder.key_id, key_hash=tenants.hash_key(key),
            secret=svc.signing_key, actor=holder.actor, scope=holder.scope,
            ttl=timedelta(hours=svc.settings.security.dashboard_session_hours),
        )  # fmt: skip
        dashboard.audit(session=session, actor=holder.actor, key_id=holder.key_id,
                        action="login", detail={"scope": holder.scope.value})  # fmt: skip
    resp = redirect(target, code=303)
    resp.set_cookie(access.COOKIE, token, httponly=True, samesite="Strict",
                    secure=access.cookie_secure(), path="/admin",
                    max_age=int(svc.settings.security.dashboard_session_hours * 3600))  # fmt: skip
    resp.delete_cookie(access.LOGIN_COOKIE, path="/admin")
    return resp


@bp.post("/logout")
@openapi.hidden
def logout() -> BaseResponse:
    viewer = _viewer()
    with session_scope(services().sessions) as session:
        dashboard.end_session(session=session, token=viewer.token)
        dashboard.audit(session=session, actor=viewer.actor, key_id=viewer.key_id, action="logout")
    resp = redirect(url_for("dashboard.login_form"), code=303)
    resp.delete_cookie(access.COOKIE, path="/admin")
    return resp


# --- overview -------------------------------------------------------------------------------


def _quantile(buckets: list[tuple[str, float]], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated inside its bucket (as
    Prometheus's histogram_quantile); None without samples."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for label, count in buckets:
        upper = float("inf") if label == "+Inf" else float(label)
        if count >= rank:
            if upper == float("inf"):
                return lower
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = upper, count
    return lower


@dataclass(frozen=True)
class Running:
    id: str
    model: str
    owner: str  # the lease owner, "host:pid"
    progress: tuple[int, int] | None


def _overview_data() -> dict[str, Any]:
    svc = services()
    settings = svc.settings
    at = now()
    with session_scope(svc.sessions) as session:
        paused = dashboard.paused(session=session)
        queue_rows = dashboard.queues(session=session, models=[*settings.model_specs, *paused])
        hour = dashboard.statuses_since(session=session, since=at - timedelta(hours=1))
        day = dashboard.statuses_since(session=session, since=at - timedelta(days=1))
        images_10m = dashboard.images_since(session=session, since=at - timedelta(minutes=10))
        failures = dashboard.failures_by_code(session=session, since=at - timedelta(days=1))
        running = [
            Running(j.id, j.model, j.lease_owner or j.worker or "", None)
            for j in dashboard.running_jobs(session=session)
        ]
    try:
        progress = svc.live.progress(r.id for r in running)
    except Exception:  # Redis down: no progress shown
        progress = {}
    running = [Running(r.id, r.model, r.owner, progress.get(r.id)) for r in running]
    try:
        hist = svc.live.stage_histograms()
        latency = {
            stage: (_quantile(hist[stage].buckets, 0.5), _quantile(hist[stage].buckets, 0.95))
            for stage in STAGES
            if stage in hist
        }
        workers = svc.live.live_workers()
        serving = heartbeats.serving(settings, workers)
    except Exception:  # Redis down: the database figures still show
        latency, workers, serving = {}, [], {}
    devices = {}
    for model in settings.model_specs:
        served = svc.served_models.get(model)
        devices[model] = served.device if served is not None else "not loaded yet"
    ours = {settings.queue_for(m) for m in settings.model_specs}
    worker_rows = []
    for w in workers:
        if not ours & set(w.queues):  # another deployment's worker on the same Redis
            continue
        host = w.hostname.partition("@")[2] or w.hostname
        mine = [r for r in running if r.owner.rpartition(":")[0] == host]
        worker_rows.append({
            "hostname": w.hostname, "models": w.models, "seen_at": w.seen_at,
            "devices": sorted({devices.get(m, "not loaded yet") for m in w.models}),
            "running": mine, "load_errors": w.load_errors,
        })  # fmt: skip
    return {
        "at": at, "queues": queue_rows, "paused": paused, "hour": hour, "day": day,
        "images_per_minute": images_10m / 10, "failures": failures, "running": running,
        "latency": latency, "workers": worker_rows, "serving": serving,
    }  # fmt: skip


@bp.get("/")
@openapi.hidden
def overview() -> Response:
    template = "_overview.html" if request.args.get("fragment") else "overview.html"
    return _page(template, **_overview_data())


@bp.get("/charts")
@openapi.hidden
def charts() -> Response:
    """Queue depth and throughput per minute over the last hour (a fragment)."""
    svc = services()
    at = now()
    with session_scope(svc.sessions) as session:
        s = dashboard.series(session=session, since=at - timedelta(hours=1), now=at,
                             step=timedelta(minutes=1))  # fmt: skip
    return _page(
        "_charts.html",
        depth=line_chart(s.queued, start=s.start, step=s.step,
                         title="Jobs waiting in the queue, per minute"),
        finished=line_chart(s.finished, start=s.start, step=s.step, kind="bar",
                            title="Jobs finished per minute"),
        images=line_chart(s.images, start=s.start, step=s.step, kind="bar",
                          title="Images per minute"),
    )  # fmt: skip


# --- jobs -----------------------------------------------------------------------------------


def _when(name: str) -> datetime | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        given = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"{name}: {raw!r} is not a date and time", param=name) from None
    try:
        value = given.astimezone(UTC) if given.tzinfo else given.replace(tzinfo=UTC)
    except OverflowError:  # its zone moves it past year 1 or 9999
        value = LATEST
    if not EARLIEST <= value < LATEST:
        raise InvalidRequest(f"{name}: {raw!r} is not between {EARLIEST:%Y-%m-%d} and "
                             f"{LATEST:%Y-%m-%d}", param=name)  # fmt: skip
    return value


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
        statuses=tuple(statuses), tenant_id=request.args.get("tenant") or None,
        model=request.args.get("model") or None, created_after=_when("from"),
        created_before=_when("to"), text=request.args.get("q", "").strip() or None, before=before,
    )  # fmt: skip


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
        items = [{"job": j, "thumb": _thumb(j), "progress": progress.get(j.id),
                  "paused": j.status is JobStatus.queued and j.model in paused}
                 for j in page]  # fmt: skip
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
    return _page(
        template, items=items, next_url=next_url, tenants=names, statuses=list(JobStatus),
        chosen={s.value for s in where.statuses}, models=list(svc.settings.model_specs),
        args=request.args, first_page=where.before is None,
        refresh=url_for("dashboard.jobs_page") + "?" + urlencode({**args, "fragment": 1},
                                                                  doseq=True),
    )  # fmt: skip


@bp.get("/jobs/<job_id>")
@openapi.hidden
def job_page(job_id: str) -> Response:
    svc = services()
    with session_scope(svc.sessions) as session:
        job = jobs.get(session=session, job_id=job_id)
        where = links(svc)
        images = [(image, where.image_url(job, image)) for image in job.images]
        inputs = [(role, record, where.input_url(job, role, record["key"]))
                  for role, record in sorted((job.inputs or {}).items())]  # fmt: skip
        hooks = list(deliveries.list_for_job(session=session, job_id=job_id))
        retries = list(dashboard.retries_of(session=session, job_id=job_id))
        tenant = tenants.get_tenant(session=session, tenant_id=job.tenant_id).name if (
            job.tenant_id) else "-"  # fmt: skip
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
    return _page(template, job=job, images=images, inputs=inputs, hooks=hooks, retries=retries,
                 tenant=tenant, paused=is_paused, position=position, progress=step,
                 terminal=job.status in TERMINAL)  # fmt: skip


@bp.post("/jobs/<job_id>/cancel")
@openapi.hidden
def cancel(job_id: str) -> BaseResponse:
    svc = services()
    done = cancel_job(svc, job_id)
    with session_scope(svc.sessions) as session:
        _audit(session, "job.cancel", job_id, changed=done)
    return _back("dashboard.job_page", "Canceled." if done else "It was canceled already.",
                 job_id=job_id)  # fmt: skip


@bp.post("/jobs/<job_id>/retry")
@openapi.hidden
def retry(job_id: str) -> BaseResponse:
    svc = services()
    with session_scope(svc.sessions) as session:
        new = jobs.retry(session=session, job_id=job_id)
        new_id, model, priority, cost = new.id, new.model, new.priority, new.cost
        candidates = int(new.params["candidates"])
        _audit(session, "job.retry", job_id, new_job=new_id)
    enqueue(svc, job_id=new_id, model=model, priority=priority, cost=cost, candidates=candidates)
    return _back("dashboard.job_page", f"Retried as job {new_id}.", job_id=new_id)


@bp.post("/webhooks/<delivery_id>/redeliver")
@openapi.hidden
def redeliver(delivery_id: str) -> BaseResponse:
    svc = services()
    with session_scope(svc.sessions) as session:
        delivery = deliveries.redeliver(session=session, delivery_id=delivery_id)
        job_id = delivery.job_id
        _audit(session, "webhook.redeliver", delivery_id, job=job_id)
    outbox(svc).send([delivery_id])
    return _back("dashboard.job_page", "Webhook redelivery scheduled.", job_id=job_id)


# --- queues ---------------------------------------------------------------------------------


@bp.get("/queues")
@openapi.hidden
def queues_page() -> Response:
    svc = services()
    with session_scope(svc.sessions) as session:
        paused = dashboard.paused(session=session)
        # A paused model is listed even without jobs or configuration: it can be resumed.
        rows = dashboard.queues(session=session, models=[*svc.settings.model_specs, *paused])
        names = tenants.list_tenants(session=session)
        tenant_rows = [(t, len(dashboard.queued_ids(session=session, tenant_id=t.id)))
                       for t in names]  # fmt: skip
    return _page("queues.html", queues=rows, paused=paused, tenants=tenant_rows)


@bp.post("/queues/<model>/pause")
@openapi.hidden
def pause(model: str) -> BaseResponse:
    """Only a model the queues page lists: configured, or with queued or running jobs."""
    svc = services()
    with session_scope(svc.sessions) as session:
        if model not in svc.settings.model_specs and not dashboard.has_work(
            session=session, model=model
        ):
            raise NotFound(f"model {model!r} is not configured and has no queued or running "
                           "jobs: there is no queue to pause", param="model")  # fmt: skip
        changed = dashboard.pause(session=session, model=model, by=_viewer().actor)
        _audit(session, "queue.pause", model, changed=changed)
    return _back("dashboard.queues_page", f"Queue {model} paused: workers start none of its jobs.")


@bp.post("/queues/<model>/resume")
@openapi.hidden
def resume(model: str) -> BaseResponse:
    with session_scope(services().sessions) as session:
        changed = dashboard.resume(session=session, model=model)
        _audit(session, "queue.resume", model, changed=changed)
    return _back("dashboard.queues_page", f"Queue {model} resumed.")


def _cancel_scope() -> tuple[str | None, str | None, str]:
    model = request.values.get("model") or None
    tenant_id = request.values.get("tenant") or None
    if model is None and tenant_id is None:
        raise InvalidRequest("name a model or a tenant whose queued jobs to cancel", param="model")
    what = " and ".join(x for x in (f"model {model}" if model else "",
                                    f"tenant {tenant_id}" if tenant_id else "") if x)  # fmt: skip
    return model, tenant_id, what


@bp.get("/queues/cancel")
@openapi.hidden
def confirm_cancel() -> Response:
    model, tenant_id, what = _cancel_scope()
    with session_scope(services().sessions) as session:
        if tenant_id is not None:
            tenants.get_tenant(session=session, tenant_id=tenant_id)
        count = len(dashboard.queued_ids(session=session, model=model, tenant_id=tenant_id))
    return _page("confirm_cancel.html", model=model, tenant=tenant_id, what=what, count=count)


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
        _audit(session, "queue.cancel_all", what, canceled=canceled, confirmed=request.form.get(
            "count"))  # fmt: skip
    return _back("dashboard.queues_page", f"Canceled {canceled} queued jobs of {what}.")


# --- tenants and keys -----------------------------------------------------------------------


@bp.get("/tenants")
@openapi.hidden
def tenants_page() -> Response:
    with session_scope(services().sessions) as session:
        rows = [(t, tenants.list_keys(session=session, tenant_id=t.id))
                for t in tenants.list_tenants(session=session)]  # fmt: skip
    return _page("tenants.html", rows=rows)


@bp.post("/tenants")
@openapi.hidden
def create_tenant() -> BaseResponse:
    from api.admin import TenantCreate

    body = TenantCreate.model_validate({"name": request.form.get("name", "")})
    with session_scope(services().sessions) as session:
        tenant = tenants.create_tenant(session=session, name=body.name)
        tenant_id = tenant.id
        _audit(session, "tenant.create", tenant_id, name=body.name)
    return _back("dashboard.tenant_page", f"Tenant {body.name} created.", tenant_id=tenant_id)


def _tenant_context(session: Any, tenant_id: str) -> dict[str, Any]:
    settings = services().settings
    tenant = tenants.get_tenant(session=session, tenant_id=tenant_id)
    return {
        "tenant": tenant,
        "keys": tenants.list_keys(session=session, tenant_id=tenant_id),
        "scopes": list(KeyScope),
        "defaults": {
            "submits_per_minute": settings.limits.tenant_submits_per_minute,
            "max_active_jobs": settings.limits.tenant_max_active_jobs,
            "max_candidates": settings.limits.max_candidates,
            "storage_quota_bytes": settings.limits.tenant_storage_quota_bytes,
            # The admin tenant's (the settings' admin key) default is every priority.
            "max_priority": (
                PRIORITY_MAX if tenant.name == ADMIN_TENANT else settings.limits.tenant_max_priority
            ),
        },
        "storage": retention.usage(
            session=session,
            tenant_id=tenant_id,
            default_quota=settings.limits.tenant_storage_quota_bytes,
        ),
    }


@bp.get("/tenants/<tenant_id>")
@openapi.hidden
def tenant_page(tenant_id: str) -> Response:
    with session_scope(services().sessions) as session:
        return _page("tenant.html", **_tenant_context(session, tenant_id))


@bp.post("/tenants/<tenant_id>/keys")
@openapi.hidden
def create_key(tenant_id: str) -> Response:
    """The new key is shown on this page once, never again (and never put in a URL)."""
    try:
        scope = KeyScope(request.form.get("scope", "tenant"))
    except ValueError:
        raise InvalidRequest("scope: not tenant, admin or operator", param="scope") from None
    name = request.form.get("name", "")[:128]
    with session_scope(services().sessions) as session:
        new = tenants.create_key(session=session, tenant_id=tenant_id, name=name, scope=scope)
        _audit(session, "key.create", new.key.id, tenant=tenant_id, prefix=new.key.prefix,
               scope=scope.value)  # fmt: skip
        return _page("tenant.html", 201, new_key=new.secret, **_tenant_context(session, tenant_id))


@bp.post("/keys/<key_id>/revoke")
@openapi.hidden
def revoke_key(key_id: str) -> BaseResponse:
    with session_scope(services().sessions) as session:
        key = tenants.revoke_key(session=session, key_id=key_id)
        tenant_id = key.tenant_id
        _audit(session, "key.revoke", key_id, tenant=tenant_id, prefix=key.prefix)
    keys_changed(services())  # every API process refuses it from its next request on
    return _back("dashboard.tenant_page", f"Key {key.prefix}… revoked.", tenant_id=tenant_id)


@bp.post("/tenants/<tenant_id>/webhook-secret")
@openapi.hidden
def rotate_secret(tenant_id: str) -> Response:
    svc = services()
    hours = svc.settings.webhooks.webhook_secret_overlap_hours
    with session_scope(svc.sessions) as session:
        tenants.get_tenant(session=session, tenant_id=tenant_id)
        made = deliveries.rotate_secret(
            session=session, tenant_id=tenant_id, overlap=timedelta(hours=hours), cipher=svc.cipher
        )
        _audit(session, "webhook_secret.rotate", tenant_id, overlap_hours=hours)
        return _page("tenant.html", 201, new_secret=made.secret,
                     **_tenant_context(session, tenant_id))  # fmt: skip


def _limit(name: str, most: int, least: int = 1) -> int | None:
    raw = request.form.get(name, "").strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or not least <= int(raw) <= most:
        raise InvalidRequest(
            f"{name}: {raw!r} is not a whole number from {least} to {most}", param=name
        )
    return int(raw)


@bp.post("/tenants/<tenant_id>/limits")
@openapi.hidden
def set_limits(tenant_id: str) -> BaseResponse:
    settings = services().settings
    limits = tenants.TenantLimits(
        submits_per_minute=_limit("submits_per_minute", 1_000_000),
        max_active_jobs=_limit("max_active_jobs", 1_000_000),
        max_candidates=_limit("max_candidates", settings.limits.max_candidates),
        max_priority=_limit("max_priority", PRIORITY_MAX, DEFAULT_PRIORITY),
    )
    with session_scope(services().sessions) as session:
        tenants.set_limits(session=session, tenant_id=tenant_id, limits=limits)
        _audit(session, "tenant.limits", tenant_id, **vars(limits))
    keys_changed(services())  # cached principals carry the limits
    return _back("dashboard.tenant_page", "Limits saved.", tenant_id=tenant_id)


@bp.post("/tenants/<tenant_id>/storage-quota")
@openapi.hidden
def set_storage_quota(tenant_id: str) -> BaseResponse:
    """Read at each submission (never cached), so no process needs telling."""
    quota = _limit("storage_quota_bytes", 2**62)
    with session_scope(services().sessions) as session:
        retention.set_quota(session=session, tenant_id=tenant_id, quota_bytes=quota)
        _audit(session, "tenant.storage_quota", tenant_id, storage_quota_bytes=quota)
    return _back("dashboard.tenant_page", "Storage quota saved.", tenant_id=tenant_id)


@bp.get("/usage")
@openapi.hidden
def usage_page() -> Response:
    until = _when("to") or now()
    since = _when("from") or until - timedelta(days=1)
    if since >= until:
        raise InvalidRequest("from: must be before to", param="from")
    with session_scope(services().sessions) as session:
        rows = dashboard.usage(session=session, since=since, until=until)
        storage = retention.usage_by_tenant(
            session=session, default_quota=services().settings.limits.tenant_storage_quota_bytes
        )
    return _page("usage.html", rows=rows, since=since, until=until, storage=storage)


@bp.get("/audit")
@openapi.hidden
def audit_page() -> Response:
    raw = request.args.get("before", "").strip()
    before = None
    if raw:
        # The log's ids are 32-bit on PostgreSQL (a larger number is a database error there).
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) < 2**31):
            raise InvalidRequest(f"before: {raw[:40]!r} is not an entry number of this log",
                                 param="before")  # fmt: skip
        before = int(raw)
    with session_scope(services().sessions) as session:
        rows = list(dashboard.audit_log(session=session, limit=PAGE + 1, before_id=before))
    page, more = rows[:PAGE], len(rows) > PAGE
    return _page(
        "audit.html",
        rows=page,
        next_url=url_for("dashboard.audit_page", before=page[-1].id) if more else None,
    )
