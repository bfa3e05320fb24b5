"""The overview (/admin/) and its charts: what the deployment is doing now, from SQL and, for
live figures (progress, stage latencies, workers), Redis; a Redis outage leaves the SQL half."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Response, request

from api import openapi
from api.dashboard.charts import line_chart
from api.dashboard.common import bp, now, render
from api.services import services
from db import dashboard
from db.session import session_scope
from server import heartbeats

STAGES = ("queue", "inference", "ranking", "upload")


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
        worker_rows.append(
            {
                "hostname": w.hostname,
                "models": w.models,
                "seen_at": w.seen_at,
                "devices": sorted({devices.get(m, "not loaded yet") for m in w.models}),
                "running": mine,
                "load_errors": w.load_errors,
            }
        )
    return {
        "at": at,
        "queues": queue_rows,
        "paused": paused,
        "hour": hour,
        "day": day,
        "images_per_minute": images_10m / 10,
        "failures": failures,
        "running": running,
        "latency": latency,
        "workers": worker_rows,
        "serving": serving,
    }


@bp.get("/")
@openapi.hidden
def overview() -> Response:
    template = "_overview.html" if request.args.get("fragment") else "overview.html"
    return render(template, **_overview_data())


@bp.get("/charts")
@openapi.hidden
def charts() -> Response:
    """Queue depth and throughput per minute over the last hour (a fragment)."""
    svc = services()
    at = now()
    with session_scope(svc.sessions) as session:
        s = dashboard.series(
            session=session, since=at - timedelta(hours=1), now=at, step=timedelta(minutes=1)
        )
    return render(
        "_charts.html",
        depth=line_chart(
            s.queued, start=s.start, step=s.step, title="Jobs waiting in the queue, per minute"
        ),
        finished=line_chart(
            s.finished, start=s.start, step=s.step, kind="bar", title="Jobs finished per minute"
        ),
        images=line_chart(
            s.images, start=s.start, step=s.step, kind="bar", title="Images per minute"
        ),
    )
