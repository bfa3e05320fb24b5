"""GET /readyz: can this API process do its work right now? Checks the database, the broker,
the image store and that some worker is alive, each on its own short timeout and all at once,
so the answer comes within DEADLINE_SECONDS even when a dependency hangs.

No authentication, as for /healthz: load balancers and orchestrators call it. Failing checks
say why in a short message (exception class and text), which may name internal hosts: keep
these endpoints on the internal network.
"""

from __future__ import annotations

import functools
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import redis
from flask import Blueprint, jsonify
from pydantic import BaseModel
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from api import openapi
from api.services import Services, services
from db.session import make_engine
from server import heartbeats
from server.settings import Settings

bp = Blueprint("readiness", __name__)

CHECK_TIMEOUT_SECONDS = 2  # each dependency, at its client
DEADLINE_SECONDS = 2.5  # the whole answer
Details = dict[str, Any]


@functools.cache
def _probe_engine(url: str) -> Engine:
    """No pool: every probe opens a fresh connection, which is what a new request may need."""
    if make_url(url).get_backend_name() == "postgresql":
        # libpq's own connect timeout. (No `options=-c statement_timeout`: PgBouncer refuses
        # that startup parameter; a server that accepts and then stalls meets the deadline.)
        connect_args = {"connect_timeout": CHECK_TIMEOUT_SECONDS}
        return create_engine(url, poolclass=NullPool, connect_args=connect_args)
    return make_engine(url, poolclass=NullPool)


@functools.cache
def _probe_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
        socket_timeout=CHECK_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),  # a retry would only overrun the deadline
    )


_s3_lock = threading.Lock()


@functools.cache
def _probe_s3(endpoint_url: str | None, region: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CHECK_TIMEOUT_SECONDS,
        read_timeout=CHECK_TIMEOUT_SECONDS,
        retries={"max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path"},
    )
    # A session of its own: boto3's default session is not safe to share across threads.
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region, config=config
    )


def check_database(settings: Settings) -> Details:
    with _probe_engine(settings.sqlalchemy_url).connect() as conn:
        conn.execute(text("SELECT 1"))
    return {}


def check_broker(settings: Settings) -> Details:
    _probe_redis(settings.services.redis_url).ping()
    return {}


def check_storage(settings: Settings) -> Details:
    if settings.storage_backend == "s3":
        with _s3_lock:
            client = _probe_s3(settings.storage.s3_endpoint_url, settings.storage.s3_region)
        client.head_bucket(Bucket=settings.storage.s3_bucket)
        return {"backend": "s3", "bucket": settings.storage.s3_bucket}
    root = settings.local_storage_path
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=root, prefix=".readyz-") as f:
        f.write(b"ok")
        f.flush()
    return {"backend": "local"}


class NotReady(Exception):
    pass


def check_workers(settings: Settings) -> Details:
    live = heartbeats.for_deployment(
        settings, heartbeats.live_workers(_probe_redis(settings.services.redis_url))
    )
    if not live:
        raise NotReady(
            f"no worker heartbeat in the last {heartbeats.TTL_SECONDS} s from a worker consuming "
            "this deployment's queues"
        )
    serving = heartbeats.serving(settings, live)
    return {"count": len(live), "unserved_models": [m for m, n in serving.items() if n == 0]}


CHECKS: dict[str, Callable[[Settings], Details]] = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
    "workers": check_workers,
}


def _describe(e: BaseException) -> str:
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def run_checks(svc: Services, deadline: float = DEADLINE_SECONDS) -> dict[str, Details]:
    """All checks in parallel daemon threads; one still running at the deadline fails. Its
    thread ends on its own at its client's timeout."""
    results: dict[str, Details] = {}

    def run(name: str, check: Callable[[Settings], Details]) -> None:
        started = time.perf_counter()
        try:
            out: Details = {"ok": True, **check(svc.settings)}
        except Exception as e:
            out = {"ok": False, "error": _describe(e)}
        out["seconds"] = round(time.perf_counter() - started, 4)
        results[name] = out

    threads = [
        threading.Thread(target=run, args=(name, check), name=f"readyz-{name}", daemon=True)
        for name, check in CHECKS.items()
    ]
    ends = time.monotonic() + deadline
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, ends - time.monotonic()))
    timed_out = {"ok": False, "error": f"no answer within {deadline} s", "seconds": deadline}
    return {name: dict(results.get(name) or timed_out) for name in CHECKS}


class Ready(BaseModel):
    status: Literal["ready"]
    checks: dict[str, dict[str, Any]]


@bp.get("/readyz")
@openapi.operation(
    "Readiness",
    tags=["health"],
    auth=None,
    responses={
        200: openapi.Reply(
            "Database, broker, storage and a worker all answer.",
            Ready,
            headers={"Cache-Control": True},
        ),
    },
    errors={
        503: "`not_ready`: the message names the failing checks; the body also carries "
        "`checks`, each with `ok` and the reason."
    },
)
def readyz() -> Any:
    checks = run_checks(services())
    failing = [name for name, result in checks.items() if not result["ok"]]
    headers = {"Cache-Control": "no-store"}
    if not failing:
        return {"status": "ready", "checks": checks}, 200, headers
    body = {
        "error": {
            "type": "service_unavailable",
            "code": "not_ready",
            "message": f"not ready; failing checks: {', '.join(failing)}",
            "param": None,
        },
        "checks": checks,
    }
    return jsonify(body), 503, headers
