"""GET /metrics: Prometheus text, computed at scrape time from the database and Redis.

Nothing is counted in process memory, so every API process (on any machine) answers the same,
and a scrape of any one of them describes the whole deployment. No authentication, like
/readyz: expose it on the internal network only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from flask import Blueprint, Response, request
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from api import openapi
from api.services import Services, services
from daikon.contract import PRIORITY_MAX
from db import deliveries, stats
from db.session import session_scope
from server import heartbeats

log = logging.getLogger("daikon.api")
bp = Blueprint("metrics", __name__)


def broker_list(queue: str, level: int) -> str:
    """The Redis transport's list for a queue at a Celery priority level (sep ':')."""
    return f"{queue}:{level}" if level else queue


class DaikonCollector(Collector):
    """Each source (database, Redis) is read separately; one that is down drops its own
    families and shows as `daikon_metrics_source_up 0`, and the scrape still succeeds."""

    def __init__(self, svc: Services):
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "daikon_metrics_source_up",
            "1 if the source answered during this scrape, else 0.",
            labels=["source"],
        )
        for source, read in (("database", self._database), ("redis", self._redis)):
            try:
                families = list(read())
            except Exception as e:
                log.warning("metrics: %s unavailable: %s", source, e)
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from families
        yield up

    def _database(self) -> Iterator[Metric]:
        with session_scope(self.svc.sessions) as session:
            counts = stats.jobs_by_status(session=session)
            unrendered = deliveries.count_unrendered(session=session)
        jobs = GaugeMetricFamily("daikon_jobs", "Jobs by status.", labels=["status"])
        for status, n in counts.items():
            jobs.add_metric([status.value], n)
        yield jobs
        yield GaugeMetricFamily(
            "daikon_webhook_unrendered_events",
            "Webhook events that could not be rendered, so were never sent; each shows as a "
            "failed delivery on its job (GET /v1/jobs/{id}/webhooks).",
            value=unrendered,
        )

    def _redis(self) -> Iterator[Metric]:
        settings = self.svc.settings
        live_state = self.svc.live
        models = list(settings.model_specs)
        lengths = iter(
            live_state.list_lengths(
                [
                    broker_list(
                        settings.queue_for(model), PRIORITY_MAX - priority
                    )  # p is level 9 - p
                    for model in models
                    for priority in range(PRIORITY_MAX + 1)
                ]
            )
        )
        depth = GaugeMetricFamily(
            "daikon_queue_depth",
            "Messages waiting in the broker, by model and client priority (0-9, 9 runs first).",
            labels=["model", "priority"],
        )
        for model in models:
            for priority in range(PRIORITY_MAX + 1):
                depth.add_metric([model, str(priority)], int(next(lengths)))

        serving = heartbeats.serving(settings, live_state.live_workers())
        live = GaugeMetricFamily(
            "daikon_workers", "Workers with a live heartbeat serving the model.", labels=["model"]
        )
        for model in models:
            live.add_metric([model], serving[model])

        stages = HistogramMetricFamily(
            "daikon_stage_seconds",
            "Duration of each stage of finished jobs (succeeded or failed).",
            labels=["stage"],
        )
        for stage, hist in live_state.stage_histograms().items():
            stages.add_metric([stage], hist.buckets, hist.sum)

        counted = live_state.reused_jobs()
        reused = CounterMetricFamily(
            "daikon_reused_jobs",
            "Jobs answered with copies of an earlier identical job's images, without running "
            "the model (DAIKON_REUSE_REPEATS).",
            labels=["model"],
        )
        for model in models:
            reused.add_metric([model], counted.get(model, 0))
        yield from (depth, live, stages, reused)


@bp.get("/metrics")
@openapi.operation(
    "Prometheus metrics",
    tags=["health"],
    auth=None,
    responses={
        200: openapi.Reply(
            "Prometheus text format.", media_type="text/plain", schema={"type": "string"}
        )
    },
)
def metrics() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaikonCollector(services()))
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(registry), content_type=content_type)
